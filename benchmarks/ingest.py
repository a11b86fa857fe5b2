"""Ingest throughput of one worker, broker included.

Pre-produces N synthetic events to a fresh topic on the embedded broker, then starts a worker
(in this process, as ``embstream run`` would) and times how long it takes until every event
is applied and its embeddings are written. Writes JSON to stdout.

``--world small`` draws the events from the default synthetic world (2,000 users, 5,000
items: a batch touches each user many times); ``--world real`` from one of real traffic's
cardinality (1,000,000 users, 100,000 items, Zipf-like activity: most users of a batch are
seen once).

    python -m benchmarks.ingest --events 200000 [--world small|real]
    python -m benchmarks.ingest --world real --compare index_versions=0 serving_cache_mb=0 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from models.bootstrap import ensure_default_encoder
from models.registry import EncoderRegistry
from models.synthetic import WORLDS, SyntheticWorld
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.producer import send_records, synthetic_records
from stream.kafka.topics import ensure_topics
from stream.service import RunningService, run_service
from stream.settings import Settings

__all__ = ["produce_events", "run_ingest"]


async def _measure(settings: Settings, expected: int) -> dict[str, Any]:
    stop = asyncio.Event()
    holder: dict[str, RunningService] = {}
    task = asyncio.create_task(run_service(settings, stop, on_ready=lambda s: holder.update(s=s)))
    while "s" not in holder:
        if task.done():
            task.result()  # the service failed to start: raise its error
        await asyncio.sleep(0.01)
    metrics = holder["s"].metrics
    while metrics.events_consumed == 0:
        await asyncio.sleep(0.001)
    started = time.perf_counter()
    first = metrics.events_consumed
    while metrics.events_consumed < expected:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    written = sum(metrics.written.values())
    stop.set()
    await task
    return {
        "events": expected - first,
        "seconds": round(elapsed, 3),
        "events_per_second": round((expected - first) / elapsed),
        "embeddings_written": written,
        "batches": metrics.batches,
        "note": "timed from the end of the first batch to the last event applied",
    }


def produce_events(bootstrap: str, topic: str, events: int, partitions: int, world: str = "small") -> float:
    """Create ``topic`` and fill it with ``events`` synthetic events of ``world`` (a name in
    ``models.synthetic.WORLDS``); returns the seconds taken."""
    ensure_topics([bootstrap], {topic: partitions})
    started = time.perf_counter()
    drawn_from = SyntheticWorld(**WORLDS[world])  # type: ignore[arg-type]
    send_records([bootstrap], topic, synthetic_records(events, world=drawn_from))
    return time.perf_counter() - started


def run_ingest(
    bootstrap: str,
    topic: str,
    events: int,
    *,
    partitions: int,
    registry: Path,
    work_dir: Path,
    **overrides: Any,
) -> dict[str, Any]:
    """Our worker (default settings but ``overrides``, default encoder) over ``events``
    already in ``topic``."""
    settings = Settings(
        broker=bootstrap,
        data_dir=work_dir / "embstream-data",
        registry=registry,
        topic=topic,
        api_port=0,
        partitions=partitions,
        group_id=f"bench-embstream-{time.time_ns()}",
        updates_topic=f"{topic}.updates",
        control_topic=f"{topic}.control",
    ).with_overrides(**overrides)
    return asyncio.run(_measure(settings, events))


def _compare(args: argparse.Namespace) -> dict[str, Any]:
    """The default worker and one variant per ``--compare`` setting, alternating, each round
    with a fresh consumer group over the same events; events/s per round and the ratios."""
    variants: dict[str, dict[str, Any]] = {"default": {}}
    for change in args.compare:
        name, _, value = change.partition("=")
        variants[change] = {name: type(getattr(Settings(), name))(value)}
    work = Path(tempfile.mkdtemp(prefix="embstream-bench-"))
    registry = work / "registry"
    ensure_default_encoder(EncoderRegistry(registry))
    rates: dict[str, list[int]] = {name: [] for name in variants}
    with EmbeddedBroker() as broker:
        topic = "bench-interactions"
        produce_events(broker.bootstrap, topic, args.events, args.partitions, args.world)
        for round_ in range(args.rounds):
            for name, overrides in variants.items():
                result = run_ingest(
                    broker.bootstrap,
                    topic,
                    args.events,
                    partitions=args.partitions,
                    registry=registry,
                    work_dir=work / f"{round_}-{len(rates[name])}-{list(variants).index(name)}",
                    **overrides,
                )
                rates[name].append(result["events_per_second"])
    return {
        "world": args.world,
        "events": args.events,
        "events_per_second": rates,
        "against_default": {
            name: [round(r / d, 3) for r, d in zip(runs, rates["default"], strict=True)]
            for name, runs in rates.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--world", choices=sorted(WORLDS), default="small")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="SETTING=VALUE",
        help="also run the worker with each of these settings changed (e.g. index_versions=0), "
        "alternating with the default on the same topic",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the comparison")
    args = parser.parse_args()
    if args.compare:
        print(json.dumps(_compare(args), indent=2))
        return
    work = Path(tempfile.mkdtemp(prefix="embstream-bench-"))
    registry = work / "registry"
    ensure_default_encoder(EncoderRegistry(registry))
    with EmbeddedBroker() as broker:
        topic = "bench-interactions"
        produce_seconds = produce_events(broker.bootstrap, topic, args.events, args.partitions, args.world)
        result = run_ingest(
            broker.bootstrap, topic, args.events, partitions=args.partitions, registry=registry, work_dir=work
        )
    result.update(
        {"world": args.world, "produce_seconds": round(produce_seconds, 2), "cores": os.cpu_count()}
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
