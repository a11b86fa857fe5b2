"""The stream worker: consumes ``interactions`` in batches and hands them to the refresher.

Records reach our code as whole batches from ``getmany`` (no per-event task, no per-event
await). Processing runs in one background thread so the lookup API on the event loop keeps
answering while a batch is encoded. Source offsets are kept in RocksDB with the state they
produced; on every partition assignment the consumer seeks to the stored offset, so a
restart neither loses nor re-applies an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from store.vector_store import VersionedVectorStore
from stream.ingest.outbox import decode_outbox
from stream.ingest.records import SourceRecord
from stream.ingest.refresher import EmbeddingRefresher
from stream.kafka.clients import group_consumer, publish, worker_producer
from stream.metrics import Metrics
from stream.settings import Settings

__all__ = [
    "BetweenBatches",
    "StreamWorker",
    "apply_records",
    "consumer_of",
    "flush_pending_outbox",
    "group_readiness",
    "producer_of",
]

log = logging.getLogger("embstream.worker")


class BetweenBatches(Protocol):
    """Work a worker does between two batches, never during one (the control plane)."""

    async def between_batches(self, loop: asyncio.AbstractEventLoop, executor: Executor) -> None: ...


def producer_of(
    settings: Settings, *, acks: int | str = 1, max_request_size: int | None = None
) -> AIOKafkaProducer:
    """The producer of a worker running with ``settings``."""
    security = settings.kafka_security.aiokafka()
    return worker_producer(settings.broker_servers, security, acks=acks, max_request_size=max_request_size)


def consumer_of(settings: Settings) -> AIOKafkaConsumer:
    """The group consumer of a worker running with ``settings`` (not subscribed yet)."""
    return group_consumer(
        settings.broker_servers,
        settings.group_id,
        settings.kafka_security.aiokafka(),
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        fetch_max_wait_ms=settings.batch_max_wait_ms,
    )


async def flush_pending_outbox(store: VersionedVectorStore, producer: AIOKafkaProducer) -> None:
    """Re-send what the previous run committed but may not have sent (at least once)."""
    pending = store.pending_outbox()
    if pending:
        messages = decode_outbox(pending)
        log.info("re-sending %d outgoing messages from the previous run", len(messages))
        await publish(producer, messages)
        store.clear_outbox()


def group_readiness(joined: bool) -> tuple[bool, str]:
    """A group consumer's part of ``/readyz``: it applies events once the group assigned it
    partitions (possibly none)."""
    return (True, "serving") if joined else (False, "starting: joining the consumer group")


async def apply_records(
    records: Sequence[SourceRecord],
    refresher: EmbeddingRefresher,
    executor: Executor,
    producer: AIOKafkaProducer,
    metrics: Metrics,
) -> None:
    """Apply consumed ``records`` through the write path on ``executor``'s thread (so the
    event loop keeps answering), then send what the batch committed to its outbox (update
    messages, dead letters) and clear it. The one way a consumer, ours or a host's (a faust
    agent), hands records over; once it returns, they may be acknowledged."""
    loop = asyncio.get_running_loop()
    for batch in refresher.plan(records):  # one, unless the last run died mid-batch
        outcome = await loop.run_in_executor(executor, refresher.process, batch)
        metrics.count(outcome)
        if outcome.outbox:
            await publish(producer, outcome.outbox)
            refresher.store.clear_outbox()


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.worker.consumer
        assert consumer is not None
        for partition in assigned:
            stored = self.worker.store.get_offset(partition.topic, partition.partition)
            if stored is not None:
                consumer.seek(partition, stored)
        self.worker.assigned = sorted(p.partition for p in assigned)
        self.worker.joined = True
        log.info("assigned partitions %s", self.worker.assigned)
        total = consumer.partitions_for_topic(self.worker.settings.topic) or set()
        if assigned and len(assigned) < len(total):
            log.warning(
                "this worker owns %d of %d partitions: another worker shares group %r. State follows "
                "partitions between workers only with EMBSTREAM_SCALE_OUT=1 on every worker; without "
                "it, run one worker per group.",
                len(assigned),
                len(total),
                self.worker.settings.group_id,
            )


class StreamWorker:
    """One worker process's consumer loop (the only worker of its group)."""

    def __init__(self, settings: Settings, store: VersionedVectorStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.assigned: list[int] = []
        self.joined = False  # the group's first assignment arrived (it may hold no partition)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embstream-refresh")
        self._last_commit = 0.0

    async def start(self) -> None:
        """Connect the producer, re-send any pending outbox, and create the group consumer;
        :meth:`run` joins the group, once the worker can apply what it is given."""
        self.producer = producer_of(self.settings)
        await self.producer.start()
        await flush_pending_outbox(self.store, self.producer)
        self.consumer = consumer_of(self.settings)
        await self.consumer.start()

    def readiness(self) -> tuple[bool, str]:
        """Whether the worker applies events (``GET /readyz`` reads it)."""
        return group_readiness(self.joined)

    async def run(
        self, stop: asyncio.Event, refresher: EmbeddingRefresher, between: BetweenBatches | None = None
    ) -> None:
        """Join the group, then consume until ``stop`` is set, applying every batch through
        ``refresher``.

        ``between`` (the control plane) runs between batches, never during one: control
        messages are applied and the backfill of a staged version advances there.
        """
        assert self.consumer is not None and self.producer is not None
        self.consumer.subscribe([self.settings.topic], listener=_SeekToStoredOffsets(self))
        loop = asyncio.get_running_loop()
        # While behind (a full batch came), the next batch's fetch runs while a batch applies
        # in the refresh thread: the consumer's record decoding uses the moments that thread
        # spends outside the interpreter (RocksDB reads, torch). Caught up, the next fetch
        # waits for the batch, so records that arrive meanwhile go into the very next batch
        # (fetched early, they would wait one batch more). Fetched records are only applied
        # after the batch before them; a record fetched twice (after a seek) is skipped.
        ahead: asyncio.Task[dict[TopicPartition, list]] | None = None  # type: ignore[type-arg]
        try:
            while not stop.is_set():
                if between is not None:
                    await between.between_batches(loop, self._executor)
                fetched = await (ahead if ahead is not None else self._fetch())
                ahead = None
                self.metrics.tick()
                if not fetched:
                    continue
                records = [record for messages in fetched.values() for record in messages]
                if len(records) >= self.settings.batch_max_records:
                    ahead = asyncio.ensure_future(self._fetch())
                await apply_records(records, refresher, self._executor, self.producer, self.metrics)
                await self._commit_to_kafka(fetched)
        finally:
            if ahead is not None:  # fetched, never applied: read again from the stored offsets
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead

    async def _fetch(self) -> dict[TopicPartition, list]:  # type: ignore[type-arg]
        assert self.consumer is not None
        return await self.consumer.getmany(
            timeout_ms=self.settings.batch_max_wait_ms, max_records=self.settings.batch_max_records
        )

    async def stop(self) -> None:
        """Leave the group and flush; safe to call whether or not ``start`` completed."""
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        self._executor.shutdown(wait=True)

    async def _commit_to_kafka(self, fetched: dict[TopicPartition, list]) -> None:  # type: ignore[type-arg]
        """Mirror progress to the consumer group (for lag monitoring), at most once a second.

        RocksDB's stored offsets stay authoritative for this worker.
        """
        now = time.monotonic()
        if now - self._last_commit < 1.0:
            return
        assert self.consumer is not None
        self._last_commit = now
        offsets = {tp: messages[-1].offset + 1 for tp, messages in fetched.items() if messages}
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # a rebalance in progress; the next commit catches up
            log.warning("offset commit to the group failed: %s", exc)
