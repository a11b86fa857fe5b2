"""Benchmarks: run with ``python -m benchmarks.<name>``; never part of the timed tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["emit_results"]


def emit_results(results: dict[str, Any], out: Path | None) -> None:
    """Print ``results`` as JSON, and write them to ``out`` too when given."""
    text = json.dumps(results, indent=2)
    if out:
        out.write_text(text + "\n")
    print(text)
