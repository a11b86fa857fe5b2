"""The stream worker: consumes ``interactions`` in batches and hands them to the refresher.

Records reach our code as whole batches from ``getmany`` (no per-event task, no per-event
await). Processing runs in one background thread so the lookup API on the event loop keeps
answering while a batch is encoded. Source offsets are kept in RocksDB with the state they
produced; on every partition assignment the consumer seeks to the stored offset, so a
restart neither loses nor re-applies an event.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from store.vector_store import VersionedVectorStore
from stream.ingest.outbox import OutgoingMessage, decode_outbox
from stream.ingest.refresher import BatchOutcome, EmbeddingRefresher
from stream.metrics import Metrics
from stream.rollout.plane import RolloutPlane
from stream.settings import Settings

__all__ = ["StreamWorker"]

log = logging.getLogger("embstream.worker")


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
    """One worker process's consumer loop."""

    #: Join the group in :meth:`start` (a scale-out worker joins later, once its replica is
    #: up to date).
    subscribe_at_start = True

    def __init__(
        self,
        settings: Settings,
        store: VersionedVectorStore,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.assigned: list[int] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embstream-refresh")
        self._last_commit = 0.0

    async def start(self) -> None:
        """Connect the producer, re-send any pending outbox, and join the consumer group."""
        servers = self.settings.broker_servers
        security = self.settings.kafka_security.aiokafka()
        self.producer = self._producer()
        await self.producer.start()
        await self._before_join()
        await self._flush_pending_outbox()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            group_id=self.settings.group_id,
            client_id="embstream-worker",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The embedded broker completes a group's first join after half the session
            # timeout; 6 s keeps start-up near 3 s and still tolerates a long batch.
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
            max_poll_interval_ms=300_000,
            fetch_max_wait_ms=self.settings.batch_max_wait_ms,
            max_partition_fetch_bytes=4 << 20,
            **security,
        )
        if self.subscribe_at_start:
            self.consumer.subscribe(self._topics(), listener=self._listener())
        await self.consumer.start()

    async def _before_join(self) -> None:
        """Checks to make once the producer is up and before joining the group."""

    def _producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.broker_servers,
            client_id="embstream-worker",
            linger_ms=5,
            acks=1,
            **self.settings.kafka_security.aiokafka(),
        )

    def _topics(self) -> list[str]:
        return [self.settings.topic]

    def _listener(self) -> ConsumerRebalanceListener:
        return _SeekToStoredOffsets(self)

    async def run(
        self, stop: asyncio.Event, refresher: EmbeddingRefresher, rollout: RolloutPlane | None = None
    ) -> None:
        """Consume until ``stop`` is set, applying every batch through ``refresher``.

        With a ``rollout`` plane, control messages are applied between batches (never during
        one) and the backfill of a staged version advances between batches too.
        """
        assert self.consumer is not None
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if rollout is not None:
                await rollout.between_batches(loop, self._executor)
            fetched = await self.consumer.getmany(
                timeout_ms=self.settings.batch_max_wait_ms, max_records=self.settings.batch_max_records
            )
            self.metrics.tick()
            if not fetched:
                continue
            records = [record for messages in fetched.values() for record in messages]
            for batch in refresher.plan(records):  # one, unless the last run died mid-batch
                outcome = await loop.run_in_executor(self._executor, refresher.process, batch)
                self._count(outcome)
                if outcome.outbox:
                    await self._publish(outcome.outbox)
                    self.store.clear_outbox()
            await self._commit_to_kafka(fetched)

    async def stop(self) -> None:
        """Leave the group and flush; safe to call whether or not ``start`` completed."""
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        self._executor.shutdown(wait=True)

    def _count(self, outcome: BatchOutcome) -> None:
        metrics = self.metrics
        metrics.events_consumed += outcome.consumed
        metrics.events_applied += outcome.applied
        metrics.item_events_applied += outcome.item_events
        metrics.events_duplicate += outcome.duplicates
        metrics.batches += 1
        metrics.rejected.update(outcome.rejected)
        metrics.quarantined += outcome.quarantined
        metrics.written.update(outcome.written)
        metrics.observe_lags(outcome.lags_seconds)

    async def _publish(self, messages: list[OutgoingMessage]) -> None:
        """Send messages in whole batches per partition, and wait until the broker has them.

        Building batches directly (instead of one ``send`` per message) skips a future and a
        partitioner call per message; keyed messages go to ``crc32(key) % partitions``.
        """
        producer = self.producer
        assert producer is not None
        grouped: dict[tuple[str, int], list[OutgoingMessage]] = {}
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

    async def _flush_pending_outbox(self) -> None:
        """Re-send what the previous run committed but may not have sent (at least once)."""
        pending = self.store.pending_outbox()
        if pending:
            messages = decode_outbox(pending)
            log.info("re-sending %d outgoing messages from the previous run", len(messages))
            await self._publish(messages)
            self.store.clear_outbox()

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
