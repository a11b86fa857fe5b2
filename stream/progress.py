"""Progress bars on a terminal, silence elsewhere."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int | None, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on stderr, disabled when stderr is not a terminal."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
    )
