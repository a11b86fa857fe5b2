"""Progress bars on a terminal, silence elsewhere."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from models.training import TrainingProgress

__all__ = ["TrainingBar", "progress_bar", "say"]


def say(message: str) -> None:
    """One line for the operator, on stderr."""
    print(f"embstream: {message}", file=sys.stderr, flush=True)


class TrainingBar(tqdm):  # type: ignore[misc]
    """A tqdm bar that understands :class:`TrainingProgress` reports."""

    def report(self, event: TrainingProgress) -> None:
        self.total = event.steps
        postfix = {"loss": f"{event.loss:.3f}"}
        if event.validation_recall is not None:
            postfix["val_recall"] = f"{event.validation_recall:.3f}"
        self.set_postfix(postfix, refresh=False)
        self.update(event.step - self.n)


def progress_bar(total: int | None, desc: str, unit: str = "it") -> Any:
    """A bar on stderr, disabled when stderr is not a terminal."""
    return TrainingBar(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
    )
