"""A paced synthetic producer for benchmarks: a steady rate, each event stamped when it is sent.

Events come from ``stream.kafka.producer.synthetic_records``, encoded once before the clock starts;
at send time only the ``ts`` digits are spliced in. Every couple of milliseconds the loop
sends the events that are due, as whole record batches per partition (aiokafka
``send_batch``), which costs far less CPU per event than one ``send`` call each. Used as a
child process by ``benchmarks.freshness``; on its own it measures what rate it sustains:

    python -m benchmarks.paced_producer --broker HOST:PORT --topic TOPIC --rate 40000 --seconds 10

Prints one JSON line when sending starts (``{"started_ms": ...}``) and one when every event
is acknowledged (sent count, seconds, achieved rate, first and last event timestamps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from aiokafka import AIOKafkaProducer

from models.synthetic import WORLDS, SyntheticWorld
from stream.kafka.producer import synthetic_records

__all__ = ["EventTemplate", "ProducerReport", "build_templates", "send_paced"]

TS_FIELD = b'"ts":'
TICK_SECONDS = 0.002
MAX_TEMPLATES = 100_000
BATCH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class EventTemplate:
    """One pre-encoded event, split around its timestamp digits."""

    partition: int
    key: bytes
    head: bytes
    tail: bytes


@dataclass(frozen=True)
class ProducerReport:
    sent: int
    seconds: float
    achieved_rate: float
    first_ts: int
    last_ts: int
    cpu_seconds: float


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def split_at_timestamp(value: bytes) -> tuple[bytes, bytes]:
    """``value`` without the digits of its ``"ts"`` field: (everything before, everything after)."""
    head, found, rest = value.partition(TS_FIELD)
    if not found:
        raise ValueError(f"no timestamp field in {value!r}")
    digits = len(rest) - len(rest.lstrip(b"0123456789"))
    return head + found, rest[digits:]


def build_templates(count: int, partitions: int, seed: int = 0, world: str = "small") -> list[EventTemplate]:
    """``count`` synthetic events of ``world`` (a name in ``models.synthetic.WORLDS``), keyed
    by user and assigned to a partition by key."""
    templates = []
    drawn_from = SyntheticWorld(seed=seed, **WORLDS[world])  # type: ignore[arg-type]
    for key, value in synthetic_records(count, seed=seed, world=drawn_from):
        assert key is not None
        head, tail = split_at_timestamp(value)
        templates.append(EventTemplate(zlib.crc32(key) % partitions, key, head, tail))
    return templates


async def send_chunk(
    producer: AIOKafkaProducer, topic: str, chunk: Sequence[EventTemplate], stamp: bytes
) -> list[asyncio.Future[object]]:
    """Send ``chunk`` stamped with ``stamp`` as one or more record batches per partition."""
    by_partition: dict[int, list[EventTemplate]] = {}
    for template in chunk:
        by_partition.setdefault(template.partition, []).append(template)
    futures = []
    for partition, templates in by_partition.items():
        batch = producer.create_batch()
        for template in templates:
            value = template.head + stamp + template.tail
            if batch.append(key=template.key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=template.key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


def due_chunk(templates: Sequence[EventTemplate], sent: int, due: int) -> list[EventTemplate]:
    """The next ``due`` templates after ``sent`` already sent, cycling through the pool."""
    size = len(templates)
    return [templates[(sent + offset) % size] for offset in range(due)]


async def send_paced(
    producer: AIOKafkaProducer,
    topic: str,
    templates: Sequence[EventTemplate],
    rate: float,
    seconds: float,
) -> ProducerReport:
    """Send at ``rate`` events/s for ``seconds``; falls behind (and says so) if it cannot keep up."""
    started, cpu_started = time.monotonic(), time.process_time()
    sent, first_ts, last_ts = 0, 0, 0
    pending: list[asyncio.Future[object]] = []
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(rate * elapsed) - sent
        if due > 0:
            last_ts = now_ms()
            first_ts = first_ts or last_ts
            chunk = due_chunk(templates, sent, due)
            pending += await send_chunk(producer, topic, chunk, str(last_ts).encode())
            sent += due
            pending = [future for future in pending if not future.done()]
        await asyncio.sleep(TICK_SECONDS)
    sending_seconds = time.monotonic() - started
    await asyncio.gather(*pending)
    achieved = round(sent / sending_seconds, 1)
    cpu = round(time.process_time() - cpu_started, 2)
    return ProducerReport(sent, round(sending_seconds, 3), achieved, first_ts, last_ts, cpu)


async def produce(
    broker: str, topic: str, rate: float, seconds: float, partitions: int, world: str = "small"
) -> ProducerReport:
    pool = min(MAX_TEMPLATES, max(1, int(rate * seconds)))
    templates = build_templates(pool, partitions, world=world)
    producer = AIOKafkaProducer(
        bootstrap_servers=broker, client_id="embstream-bench-producer", acks=1, max_batch_size=BATCH_BYTES
    )
    await producer.start()
    try:
        await producer.partitions_for(topic)
        print(json.dumps({"started_ms": now_ms()}), flush=True)
        return await send_paced(producer, topic, templates, rate, seconds)
    finally:
        await producer.stop()


def main(argv: Sequence[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--world", choices=sorted(WORLDS), default="small")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = asyncio.run(
        produce(args.broker, args.topic, args.rate, args.seconds, args.partitions, args.world)
    )
    print(json.dumps(asdict(report)), flush=True)


if __name__ == "__main__":
    main()
