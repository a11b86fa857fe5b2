"""Ingest throughput of one worker, broker included.

Pre-produces N synthetic events to a fresh topic on the embedded broker, then starts a worker
(in this process, as ``embstream run`` would) and times how long it takes until every event
is applied and its embeddings are written. Writes JSON to stdout.

    python -m benchmarks.ingest --events 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from models.bootstrap import ensure_default_encoder
from models.registry import EncoderRegistry
from stream.broker import EmbeddedBroker, ensure_topics
from stream.producer import send_records, synthetic_records
from stream.service import RunningService, run_service
from stream.settings import Settings


async def _measure(settings: Settings, expected: int) -> dict[str, float]:
    stop = asyncio.Event()
    holder: dict[str, RunningService] = {}
    task = asyncio.create_task(run_service(settings, stop, on_ready=lambda s: holder.update(s=s)))
    while "s" not in holder:
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="embstream-bench-"))
    registry = work / "registry"
    ensure_default_encoder(EncoderRegistry(registry))
    with EmbeddedBroker() as broker:
        topic = "bench-interactions"
        ensure_topics([broker.bootstrap], {topic: args.partitions})
        produced_at = time.perf_counter()
        send_records([broker.bootstrap], topic, synthetic_records(args.events))
        produce_seconds = time.perf_counter() - produced_at
        settings = Settings(
            broker=broker.bootstrap,
            data_dir=work / "data",
            registry=registry,
            topic=topic,
            api_port=0,
            partitions=args.partitions,
            group_id="bench",
            updates_topic="bench-updates",
        )
        result = asyncio.run(_measure(settings, args.events))
    result.update({"produce_seconds": round(produce_seconds, 2), "cores": os.cpu_count()})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
