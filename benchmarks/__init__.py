"""Benchmarks: run with ``python -m benchmarks.<name>``; never part of the timed tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["current_commit", "emit_results"]


def current_commit() -> str | None:
    """The checkout's short commit, for a result to name (None outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def emit_results(results: dict[str, Any], out: Path | None) -> None:
    """Print ``results`` as JSON, and write them to ``out`` too when given."""
    text = json.dumps(results, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
