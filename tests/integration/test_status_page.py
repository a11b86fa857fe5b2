"""The status page at ``/``, loaded in headless Chromium from a running worker: it runs its
script, fetches ``/v1/status`` and shows live numbers."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest

from stream.kafka.broker import EmbeddedBroker
from stream.kafka.producer import send_records
from tests.conftest import WorkerProcess, http_json, wait_until

pytestmark = pytest.mark.integration

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium on PATH (scripts/install adds chromium-headless-shell where apt can)")


def _rendered(browser: str, url: str) -> str:
    """The page's DOM after its scripts ran (virtual time lets the fetches complete)."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000"]
    result = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _text(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"no element {element_id!r} in the page"
    return match.group(1)


def test_the_status_page_shows_live_numbers_from_a_running_worker(
    worker_factory: Callable[..., WorkerProcess], broker: EmbeddedBroker
) -> None:
    browser = _browser()
    worker = worker_factory("status-interactions")
    now = int(time.time() * 1000)
    events = [
        (
            f"p{n % 50}".encode(),
            f'{{"user_id": "p{n % 50}", "item_id": "i{n % 7}", "type": "view", "ts": {now}}}'.encode(),
        )
        for n in range(3_000)
    ]
    bad = [(b"x", b"not json")] * 3
    send_records([broker.bootstrap], worker.topic, events + bad)
    # Two status samples (one every 2 s) after the events were consumed.
    wait_until(
        lambda: http_json("GET", f"{worker.api}/v1/status")[1]["events_consumed"] >= 3_003, timeout_s=30
    )
    wait_until(lambda: len(http_json("GET", f"{worker.api}/v1/status")[1]["history"]) >= 2, timeout_s=15)
    dom = _rendered(browser, f"{worker.api}/")
    assert _text(dom, "error") == ""
    assert _text(dom, "state").startswith("live")
    assert _text(dom, "serving") == "v1" and _text(dom, "staged") == "none"
    assert int(_text(dom, "consumed").replace(",", "")) >= 3_003
    assert int(_text(dom, "dlq").replace(",", "")) == 3
    p50, p99 = (float(x.replace(",", "")) for x in _text(dom, "freshness").split(" / "))
    assert 0 < p50 <= p99
    points = re.search(r'id="rate-line"[^>]*points="([^"]*)"', dom)
    assert points and len(points.group(1).split()) >= 2  # the chart has a line
