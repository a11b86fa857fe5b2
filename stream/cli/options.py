"""Command-line argument types shared by the verbs."""

from __future__ import annotations

import argparse

__all__ = ["non_negative_int", "positive_int"]


def _integer(text: str) -> int:
    """ASCII digits, with an optional sign (``int()`` alone would take "١" too)."""
    digits = text.strip().removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    return int(text)


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value
