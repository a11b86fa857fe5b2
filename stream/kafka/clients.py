"""The Kafka clients a worker runs: its producer, its group consumer, and publishing whole
batches of messages through the producer."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

__all__ = ["Message", "group_consumer", "group_generation", "publish", "worker_producer"]


class Message(Protocol):
    """A message to publish (``stream.ingest.outbox.OutgoingMessage``)."""

    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...
    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]: ...
    @property
    def partition(self) -> int | None: ...


def worker_producer(
    servers: list[str], security: dict[str, Any], *, acks: int | str = 1, max_request_size: int | None = None
) -> AIOKafkaProducer:
    """A worker's producer: dead letters, updates and control messages (with scale-out also
    item bundles and changelog batches, acknowledged by all replicas). ``security``: the
    connection options of ``stream.kafka.security.KafkaSecurity.aiokafka``."""
    options: dict[str, Any] = {} if max_request_size is None else {"max_request_size": max_request_size}
    return AIOKafkaProducer(
        bootstrap_servers=servers, client_id="embstream-worker", linger_ms=5, acks=acks, **options, **security
    )


def group_consumer(
    servers: list[str],
    group_id: str,
    security: dict[str, Any],
    *,
    session_timeout_ms: int,
    heartbeat_interval_ms: int,
    fetch_max_wait_ms: int,
) -> AIOKafkaConsumer:
    """A worker's consumer of its group (subscribed by the caller)."""
    return AIOKafkaConsumer(
        bootstrap_servers=servers,
        group_id=group_id,
        client_id="embstream-worker",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # The embedded broker completes a group's first join after half the session
        # timeout; 6 s keeps start-up near 3 s and still tolerates a long batch.
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        max_poll_interval_ms=300_000,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=4 << 20,
        **security,
    )


def group_generation(consumer: AIOKafkaConsumer) -> int:
    """The consumer's group generation (negative while it is not a member). aiokafka has no
    public accessor; this is the one place that reads its coordinator (aiokafka is pinned
    below 0.15 in pyproject.toml)."""
    return int(consumer._coordinator.generation)


async def publish(producer: AIOKafkaProducer, messages: Sequence[Message]) -> None:
    """Send ``messages`` in whole batches per partition and wait until the broker has them.

    Building batches directly (instead of one ``send`` per message) skips a future and a
    partitioner call per message; keyed messages go to ``crc32(key) % partitions`` (so one
    key's messages stay in order), unkeyed ones to partition 0, unless a message names one.
    """
    grouped: dict[tuple[str, int], list[Message]] = {}
    partitions: dict[str, int] = {}
    for message in messages:
        if message.topic not in partitions:
            known = await producer.partitions_for(message.topic)
            partitions[message.topic] = max(1, len(known))
        count = partitions[message.topic]
        if message.partition is not None:
            partition = message.partition
        elif message.key is None or count == 1:
            partition = 0
        else:
            partition = zlib.crc32(message.key) % count
        grouped.setdefault((message.topic, partition), []).append(message)
    pending = []
    for (topic, partition), group in grouped.items():
        batch, filled = producer.create_batch(), 0
        for message in group:
            headers = list(message.headers)
            if batch.append(key=message.key, value=message.value, timestamp=None, headers=headers):
                filled += 1
                continue
            if filled:  # the batch is full: send it and start the next one
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch, filled = producer.create_batch(), 0
                if batch.append(key=message.key, value=message.value, timestamp=None, headers=headers):
                    filled = 1
                    continue
            # larger than a whole batch: the producer's own path handles (or refuses) it
            pending.append(
                await producer.send(
                    topic, message.value, key=message.key, headers=headers or None, partition=partition
                )
            )
        if filled:
            pending.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*pending)
