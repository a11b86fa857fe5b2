"""The benchmark harness: every figure of BENCHMARKS.md in one run, on one machine.

    python -m benchmarks                      # everything (about 15 minutes on 2 cores)
    python -m benchmarks --quick              # smaller sizes, for a smoke run
    python -m benchmarks --only ingest,peers  # some sections
    python -m benchmarks --only ingest,peers --world real --out benchmarks/results/harness-real.json

Sections, in order: ``ingest`` (our worker) and ``peers`` (raw aiokafka, faust, Quix
Streams) on the same pre-produced events, of the small world or (``--world real``) of real
cardinality; ``freshness`` against load (with its plot);
``lookups`` (HTTP single and batch, binary and JSON, with Redis as the peer); ``storage``
(bytes per entity per version at 1M entities, float16 mode, recall effect); ``backfill``
(entities re-encoded per second). Writes ``benchmarks/results/harness.json`` and
``benchmarks/results/freshness.png`` and prints a Markdown summary.

The peers need the ``bench`` extra (``pip install -e '.[bench]'``); Redis needs Debian's
``redis-server`` on PATH (the lookups section skips the peer without it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.bootstrap import ensure_default_encoder
from models.registry import EncoderRegistry
from stream.kafka.broker import EmbeddedBroker

SECTIONS = ("ingest", "peers", "freshness", "lookups", "storage", "backfill")
RESULTS = Path("benchmarks/results")


def _say(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _stream_sections(args: argparse.Namespace, work: Path, chosen: set[str]) -> dict[str, Any]:
    """Our worker and the peers on the same events, in the same broker, one after another."""
    from benchmarks.ingest import produce_events, run_ingest
    from benchmarks.peers import run_peers

    registry = work / "registry"
    ensure_default_encoder(EncoderRegistry(registry))
    results: dict[str, Any] = {}
    with EmbeddedBroker() as broker:
        topic = "bench-interactions"
        _say(f"producing {args.events:,} events of the {args.world} world to {args.partitions} partitions")
        results["produce_seconds"] = round(
            produce_events(broker.bootstrap, topic, args.events, args.partitions, args.world), 2
        )
        if "ingest" in chosen:
            _say("ingest: our worker")
            results["ingest"] = run_ingest(
                broker.bootstrap, topic, args.events, partitions=args.partitions, registry=registry,
                work_dir=work / "ingest",
            )  # fmt: skip
            _say(f"ingest: {results['ingest']['events_per_second']:,} events/s")
        if "peers" in chosen:
            _say("peers: raw aiokafka, faust, Quix Streams (each in its own process)")
            results["peers"] = run_peers(
                broker.bootstrap, topic, args.events, partitions=args.partitions, registry=registry,
                work_dir=work / "peers", time_budget_s=args.peer_budget, torch_threads=1,
            )  # fmt: skip
    return results


def _ratios(results: dict[str, Any]) -> dict[str, float]:
    ours = results.get("ingest", {}).get("events_per_second")
    peers = results.get("peers", {})
    ratios = {}
    for name in ("raw-aiokafka", "faust-naive", "faust-noop", "quix-stateful", "quix-stateful+encode"):
        theirs = peers.get(name, {}).get("events_per_second")
        if ours and theirs:
            ratios[f"embstream / {name}"] = round(ours / theirs, 2)
    return ratios


def _run_section(name: str, results: dict[str, Any], run: Callable[[], Any]) -> None:
    _say(f"{name}: running")
    started = time.perf_counter()
    try:
        results[name] = run()
    except Exception as error:  # one failing section must not lose the others' figures
        results[name] = {"failed": f"{type(error).__name__}: {error}"}
        _say(f"{name}: FAILED: {error}")
    results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)


def _summary(results: dict[str, Any]) -> str:
    lines = ["| figure | value |", "|---|---|"]
    ingest = results.get("ingest", {})
    if "events_per_second" in ingest:
        lines.append(f"| ingest, our worker | {ingest['events_per_second']:,} events/s |")
    for name, peer in results.get("peers", {}).items():
        if "events_per_second" in peer:
            lines.append(f"| ingest, {name} | {peer['events_per_second']:,} events/s |")
    for name, ratio in results.get("ratios", {}).items():
        lines.append(f"| {name} | {ratio}x |")
    for run in results.get("freshness", {}).get("runs", []):
        saturated = " (saturated)" if run.get("saturated") else ""
        lines.append(
            f"| freshness at {run['achieved_rate']:,} events/s | p50 {run['p50_ms']} ms,"
            f" p95 {run['p95_ms']} ms, p99 {run['p99_ms']} ms{saturated} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures")
    parser.add_argument("--events", type=int, default=None, help="events for ingest and peers (200,000)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--world",
        choices=("small", "real"),
        default="small",
        help="ingest and peers: events of the small world (2,000 users, 5,000 items) or of real "
        "cardinality (1,000,000 users, 100,000 items, Zipf-like activity)",
    )
    parser.add_argument("--peer-budget", type=float, default=60.0, help="seconds per peer at most")
    parser.add_argument("--out", type=Path, default=RESULTS / "harness.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "freshness.png")
    args = parser.parse_args(argv)
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    args.events = args.events or (30_000 if args.quick else 200_000)
    if args.quick:
        args.peer_budget = min(args.peer_budget, 15.0)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": _commit(),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "world": args.world,
    }
    with tempfile.TemporaryDirectory(prefix="embstream-bench-") as scratch:
        work = Path(scratch)
        if chosen & {"ingest", "peers"}:
            results.update(_stream_sections(args, work, chosen))
            results["ratios"] = _ratios(results)
        if "freshness" in chosen:
            from benchmarks.freshness import plot_freshness, run_freshness

            rates = (5_000, 20_000) if args.quick else (5_000, 10_000, 20_000, 30_000, 40_000, 50_000)
            seconds = 8.0 if args.quick else 15.0
            _run_section("freshness", results, lambda: run_freshness(work / "freshness", rates, seconds))
            if "runs" in results["freshness"]:
                args.plot.parent.mkdir(parents=True, exist_ok=True)
                plot_freshness(results["freshness"], args.plot)
        if "lookups" in chosen:
            from benchmarks.lookups import run_lookups

            entities, duration = (20_000, 2.0) if args.quick else (200_000, 5.0)
            _run_section("lookups", results, lambda: run_lookups(work / "lookups", entities, duration))
        if "storage" in chosen:
            from benchmarks.storage import run_storage

            entities = 50_000 if args.quick else 1_000_000
            _run_section("storage", results, lambda: run_storage(work / "storage", entities))
        if "backfill" in chosen:
            from benchmarks.storage import run_backfill

            entities = 20_000 if args.quick else 200_000
            _run_section("backfill", results, lambda: run_backfill(work / "backfill", entities))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(_summary(results))
    _say(f"wrote {args.out}" + (f" and {args.plot}" if "freshness" in chosen else ""))


if __name__ == "__main__":
    main()
