"""The fault suite's figures: each scenario reports what it measured (events produced and
applied, seconds to recover), and the figures are printed at the end of every run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

_FIGURES: list[str] = []


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``report(events_produced=..., seconds_to_recover=...)``: one line in the summary."""

    def add(**figures: Any) -> None:
        line = ", ".join(f"{name} {value}" for name, value in figures.items())
        _FIGURES.append(f"{request.node.name}: {line}")

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("embstream fault figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
