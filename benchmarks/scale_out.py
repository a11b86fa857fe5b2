"""Ingest with scale-out: one worker without it, one worker with it, and two workers sharing
the partitions, each on its own copy of the same pre-produced events, in one run.

Every worker is a real ``embstream run`` process against one embedded broker; the figures
come from their ``/metrics``. A configuration is timed from the first event consumed until
every event has been applied to user state and to item state (with scale-out the item side
is a second hop, through ``<topic>.by-item``). Writes JSON to stdout (or ``--out``).

    python -m benchmarks.scale_out --events 200000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import emit_results
from benchmarks.ingest import produce_events
from models.bootstrap import ensure_default_encoder
from models.registry import EncoderRegistry
from stream.kafka.broker import EmbeddedBroker, free_port

__all__ = ["run_scale_out"]

CONFIGURATIONS = (
    ("one worker", False, 1),
    ("one worker, scale-out", True, 1),
    ("two workers, scale-out", True, 2),
)


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _owned(port: int) -> list[int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        return list(json.loads(answer.read())["assigned_partitions"])


def _run(
    bootstrap: str, topic: str, events: int, scale_out: bool, workers: int, registry: Path, work: Path
) -> dict[str, Any]:
    ports = [free_port() for _ in range(workers)]
    env = {
        **os.environ,
        "EMBSTREAM_GROUP_ID": f"bench-{topic}",
        "EMBSTREAM_UPDATES_TOPIC": f"{topic}.updates",
        "EMBSTREAM_CONTROL_TOPIC": f"{topic}.control",
    }
    processes = []
    try:
        for index, port in enumerate(ports):
            command = [sys.executable, "-m", "stream.cli", "run", "--broker", bootstrap, "--topic", topic,
                       "--data-dir", str(work / f"data-{topic}-{index}"), "--registry", str(registry),
                       "--api-port", str(port)] + (["--scale-out"] if scale_out else [])  # fmt: skip
            log = (work / f"{topic}-{index}.log").open("wb")
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
        started = None
        deadline = time.monotonic() + 600
        samples = []
        while time.monotonic() < deadline:
            for index, process in enumerate(processes):
                if process.poll() is not None:
                    log_text = (work / f"{topic}-{index}.log").read_text()[-2000:]
                    raise RuntimeError(f"{topic}: worker {index} exited ({process.returncode}):\n{log_text}")
            try:
                figures = [_metrics(port) for port in ports]
            except OSError:
                time.sleep(0.05)
                continue
            consumed = sum(f.get("embstream_events_consumed_total", 0) for f in figures)
            applied = sum(f.get("embstream_events_applied_total", 0) for f in figures)
            items = sum(f.get("embstream_item_events_applied_total", 0) for f in figures)
            now = time.perf_counter()
            if started is None and consumed > 0:
                started = now
            samples.append((now, consumed, items))
            if consumed >= events and items >= applied:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"{topic}: not done within 600 s")
        assert started is not None
        elapsed = time.perf_counter() - started
        owned = [_owned(port) for port in ports]
        logs = [(work / f"{topic}-{index}.log").read_text() for index in range(workers)]
        return {
            "workers": workers,
            "scale_out": scale_out,
            "events": events,
            "seconds": round(elapsed, 2),
            "events_per_second": round(events / elapsed),
            "partitions_owned_at_end": owned,
            "generations_seen": sum(log.count(": owns partitions") for log in logs),
            "changelog_batches_applied": [
                f.get("embstream_changelog_batches_applied_total") for f in figures
            ],
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def run_scale_out(events: int, partitions: int = 4, work: Path | None = None) -> dict[str, Any]:
    work = work or Path(tempfile.mkdtemp(prefix="embstream-scale-"))
    registry = work / "registry"
    ensure_default_encoder(EncoderRegistry(registry))
    results: dict[str, Any] = {"cores": os.cpu_count(), "partitions": partitions, "runs": []}
    with EmbeddedBroker() as broker:
        for index, (name, scale_out, workers) in enumerate(CONFIGURATIONS):
            topic = f"scale-bench-{index}"
            produce_events(broker.bootstrap, topic, events, partitions)
            run = _run(broker.bootstrap, topic, events, scale_out, workers, registry, work)
            run["name"] = name
            results["runs"].append(run)
            print(f"{name}: {run['events_per_second']:,} events/s", file=sys.stderr, flush=True)
    base = results["runs"][0]["events_per_second"]
    results["ratios_to_one_worker"] = {
        run["name"]: round(run["events_per_second"] / base, 2) for run in results["runs"]
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit_results(run_scale_out(args.events, args.partitions), args.out)


if __name__ == "__main__":
    main()
