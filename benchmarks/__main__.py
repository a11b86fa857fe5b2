"""The benchmark harness: every figure of BENCHMARKS.md in one run, on one machine.

    python -m benchmarks                      # everything, both worlds (about 35 minutes on 2 cores)
    python -m benchmarks --quick              # smaller sizes, for a smoke run
    python -m benchmarks --only ingest,peers  # some sections
    python -m benchmarks --only ingest,peers --world real --out benchmarks/results/harness-real.json

Every section but storage runs in each world (``--world both``, the default, or one of
them): the small synthetic world (2,000 users, 5,000 items) and the world of real
cardinality (1,000,000 users, 100,000 items, Zipf-like activity; ``models.synthetic.WORLDS``).
Sections, in order: ``ingest`` (our worker) and ``peers`` (raw aiokafka, faust, Quix
Streams) on the same pre-produced events; ``faust`` (our worker, a no-op faust agent and a
faust app with embstream attached, on the same events; included in ``peers``);
``freshness`` against load (with its plot);
``lookups`` (HTTP single and batch, binary and JSON, with Redis as the peer; 200,000 users
read uniformly, or 1,000,000 read with the real world's skew); ``backfill`` (entities
re-encoded per second, on a store filled with the world's events); then ``storage`` (bytes
per entity per version at 1M entities, float16 mode, recall effect). Writes
``benchmarks/results/harness.json`` (figures under ``worlds.<world>``) and
``benchmarks/results/freshness.png`` (``freshness-real.png`` for the real world) and prints
a Markdown summary.

The peers need the ``bench`` extra (``pip install -e '.[bench]'``); Redis needs Debian's
``redis-server`` on PATH (the lookups section skips the peer without it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import current_commit
from models.bootstrap import ensure_default_encoder
from models.registry import EncoderRegistry
from stream.kafka.broker import EmbeddedBroker

SECTIONS = ("ingest", "peers", "faust", "freshness", "lookups", "backfill", "storage")
#: ``faust``: embstream inside a faust app, beside a no-op faust agent and our worker.
FAUST_PEERS = {"faust-noop", "faust-embstream"}
RESULTS = Path("benchmarks/results")


def _say(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _stream_sections(args: argparse.Namespace, world: str, work: Path, chosen: set[str]) -> dict[str, Any]:
    """Our worker and the peers on the same events, in the same broker, one after another."""
    from benchmarks.ingest import produce_events, run_ingest
    from benchmarks.peers import run_peers

    registry = work / "registry"
    ensure_default_encoder(EncoderRegistry(registry))
    results: dict[str, Any] = {}
    with EmbeddedBroker() as broker:
        topic = "bench-interactions"
        _say(f"producing {args.events:,} events of the {world} world to {args.partitions} partitions")
        results["produce_seconds"] = round(
            produce_events(broker.bootstrap, topic, args.events, args.partitions, world), 2
        )
        if chosen & {"ingest", "faust"}:
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
        elif "faust" in chosen:
            _say("faust: a no-op faust agent and a faust app with embstream (each in its own process)")
            results["peers"] = run_peers(
                broker.bootstrap, topic, args.events, partitions=args.partitions, registry=registry,
                work_dir=work / "peers", time_budget_s=args.peer_budget, torch_threads=1, only=FAUST_PEERS,
            )  # fmt: skip
    return results


def _ratios(results: dict[str, Any]) -> dict[str, float]:
    ours = results.get("ingest", {}).get("events_per_second")
    peers = results.get("peers", {})
    ratios = {}
    for name in (
        "raw-aiokafka",
        "faust-naive",
        "faust-noop",
        "faust-embstream",
        "quix-stateful",
        "quix-stateful+encode",
    ):
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
    lines = ["| world | figure | value |", "|---|---|---|"]
    for world, found in results.get("worlds", {}).items():
        ingest = found.get("ingest", {})
        if "events_per_second" in ingest:
            lines.append(f"| {world} | ingest, our worker | {ingest['events_per_second']:,} events/s |")
        for name, peer in found.get("peers", {}).items():
            if "events_per_second" in peer:
                lines.append(f"| {world} | ingest, {name} | {peer['events_per_second']:,} events/s |")
        for name, ratio in found.get("ratios", {}).items():
            lines.append(f"| {world} | {name} | {ratio}x |")
        for run in found.get("freshness", {}).get("runs", []):
            saturated = " (saturated)" if run.get("saturated") else ""
            lines.append(
                f"| {world} | freshness at {run['achieved_rate']:,} events/s | p50 {run['p50_ms']} ms,"
                f" p95 {run['p95_ms']} ms, p99 {run['p99_ms']} ms{saturated} |"
            )
        single = found.get("lookups", {}).get("api", {}).get("get", {})
        if "p99_ms" in single:
            lines.append(
                f"| {world} | lookup, single GET | p50 {single['p50_ms']} ms, p99 {single['p99_ms']} ms |"
            )
        backfill = found.get("backfill", {}).get("backfill", {}).get("chunk_2000", {})
        if "entities_per_second" in backfill:
            lines.append(f"| {world} | backfill | {backfill['entities_per_second']:,} entities/s |")
    return "\n".join(lines)


def _world_sections(args: argparse.Namespace, world: str, work: Path, chosen: set[str]) -> dict[str, Any]:
    """Every section but storage on the events (or the population) of one world."""
    results: dict[str, Any] = {}
    if chosen & {"ingest", "peers", "faust"}:
        results.update(_stream_sections(args, world, work, chosen))
        results["ratios"] = _ratios(results)
    if "freshness" in chosen:
        from benchmarks.freshness import plot_freshness, run_freshness

        rates = (5_000, 20_000) if args.quick else (5_000, 10_000, 20_000, 30_000, 40_000, 50_000)
        seconds = 8.0 if args.quick else 15.0
        _run_section("freshness", results, lambda: run_freshness(work / "freshness", rates, seconds, world))
        if "runs" in results["freshness"]:
            plot = _plot_path(args.plot, world)
            plot.parent.mkdir(parents=True, exist_ok=True)
            plot_freshness(results["freshness"], plot)
    if "lookups" in chosen:
        from dataclasses import replace

        from benchmarks.lookups import POPULATIONS, run_lookups

        population, duration = POPULATIONS[world], 5.0
        if args.quick:
            population, duration = replace(population, entities=20_000), 2.0
        _run_section("lookups", results, lambda: run_lookups(work / "lookups", population, duration))
    if "backfill" in chosen:
        from benchmarks.storage import run_backfill

        entities = 20_000 if args.quick else 200_000
        _run_section("backfill", results, lambda: run_backfill(work / "backfill", entities, world))
    return results


def _plot_path(plot: Path, world: str) -> Path:
    """The small world's plot at ``plot``; another world's beside it (``freshness-real.png``)."""
    return plot if world == "small" else plot.with_name(f"{plot.stem}-{world}{plot.suffix}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures")
    parser.add_argument("--events", type=int, default=None, help="events for ingest and peers (200,000)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--world",
        choices=("both", "small", "real"),
        default="both",
        help="the small world (2,000 users, 5,000 items), the world of real cardinality "
        "(1,000,000 users, 100,000 items, Zipf-like activity), or both, one after the other",
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
        "commit": current_commit(),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "world": args.world,
    }
    worlds = ("small", "real") if args.world == "both" else (args.world,)
    results["worlds"] = {}
    with tempfile.TemporaryDirectory(prefix="embstream-bench-") as scratch:
        for world in worlds:
            _say(f"the {world} world")
            results["worlds"][world] = _world_sections(args, world, Path(scratch) / world, chosen)
        if "storage" in chosen:  # bytes per entity: the same in every world
            from benchmarks.storage import run_storage

            entities = 50_000 if args.quick else 1_000_000
            _run_section("storage", results, lambda: run_storage(Path(scratch) / "storage", entities))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(_summary(results))
    plots = [str(_plot_path(args.plot, world)) for world in worlds] if "freshness" in chosen else []
    _say(f"wrote {', '.join([str(args.out), *plots])}")


if __name__ == "__main__":
    main()
