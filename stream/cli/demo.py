"""``embstream demo``: everything ``run`` does, plus a synthetic producer and a status line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

from store.lookup import lookup_one
from stream.service import RunningService, run_service, say
from stream.settings import Settings

__all__ = ["run_demo", "status_line"]


def status_line(service: RunningService, watched: str) -> str:
    """One line: rate, freshness, entities per kind, versions, dead letters, a live vector."""
    metrics, store = service.metrics, service.store
    counts = store.version_counts()
    serving = store.serving_version
    p50, p99 = metrics.lag_percentile(0.5), metrics.lag_percentile(0.99)
    staged_version = service.controller.state.staged
    staged = "" if staged_version is None else f" staged v{staged_version}"
    fresh = "-" if p50 is None or p99 is None else f"p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms"
    users = counts["user"].get(serving or 0, 0)
    items = counts["item"].get(serving or 0, 0)
    line = (
        f"{metrics.events_per_second():7.0f} ev/s | freshness {fresh} | users {users:,} items {items:,}"
        f" | serving v{serving}{staged} | dlq {sum(metrics.rejected.values())}"
    )
    if serving is not None:
        try:
            found = lookup_one(store, "user", watched, serving)
        except Exception:  # the watched user may lack the serving version for a moment
            found = None
        if found is not None:
            head = " ".join(f"{x:+.2f}" for x in found.vector[:3])
            age = max(0.0, time.time() - found.updated_at_ms / 1000)
            line += f" | {watched} [{head} …] {age:.1f}s ago"
    return line


async def _report(service: RunningService, stop: asyncio.Event) -> None:
    tty = sys.stdout.isatty()
    last_print = 0.0
    watched = "u0"
    while not stop.is_set():
        await asyncio.sleep(1.0)
        line = status_line(service, watched)
        if tty:
            print("\r" + line[:200].ljust(120), end="", flush=True)
        elif time.monotonic() - last_print >= 5:
            print(line, flush=True)
            last_print = time.monotonic()
    if tty:
        print()


async def run_demo(settings: Settings, stop: asyncio.Event, rate: float) -> None:
    def on_ready(service: RunningService) -> Callable[[], None]:
        command = [
            sys.executable,
            "-m",
            "stream.cli",
            "produce",
            "--synthetic",
            "0",
            "--rate",
            str(rate),
            "--bad-every",
            "500",
            "--broker",
            str(service.settings.broker),
            "--topic",
            service.settings.topic,
            "--seed",
            str(service.settings.seed),
        ]
        producer = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)
        say(f"synthetic producer started ({rate:.0f} events/s, every 500th malformed for the DLQ)")
        say(f"try: curl http://{service.settings.api_host}:{service.settings.api_port}/v1/embeddings/user/u0")
        reporter = asyncio.create_task(_report(service, stop))

        def shutdown() -> None:
            reporter.cancel()
            producer.terminate()
            try:
                producer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                producer.kill()
                producer.wait()

        return shutdown

    await run_service(settings, stop, on_ready=on_ready)
