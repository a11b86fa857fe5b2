"""The ``embstream`` command: one module per group of verbs."""

from __future__ import annotations

from stream.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
