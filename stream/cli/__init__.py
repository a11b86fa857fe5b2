"""The ``embstream`` command: one module per group of verbs."""

from __future__ import annotations

from stream.cli.main import main

__all__ = ["main"]
