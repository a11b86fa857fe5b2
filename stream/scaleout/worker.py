"""A worker that shares its consumer group with others (``EMBSTREAM_SCALE_OUT``).

Per batch: prepare it (uncommitted); publish its item bundles, updates and dead letters, then
its changelog batches; commit the source offsets to the group at the worker's generation (the
broker refuses that commit if the group has moved the partitions elsewhere: the batch is
then dropped, uncommitted, and its partitions rewound); and only then commit it to RocksDB.
Between batches the worker applies what other workers published (:class:`ChangelogFollower`),
so its store holds every partition and its API answers for every id. It joins the group only
once it has replayed the changelog to its end, so a take-over (which runs while the group
waits, without heartbeats) reads only a short tail.

Longer than the 400 lines modules keep to, for one reader: partition ownership (take-over,
release, rewind) and the batch loop share one lock and one generation, and their order is
the correctness argument.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from store.vector_store import VersionedVectorStore
from stream.console import say
from stream.errors import BrokerError, ReplicaError, SettingsError
from stream.ingest.worker import BetweenBatches, consumer_of, flush_pending_outbox, producer_of
from stream.kafka.clients import group_generation, publish
from stream.kafka.topics import changelog_topic, scale_out_topics
from stream.metrics import Metrics
from stream.rollout.backfill import fill_missing
from stream.scaleout.changelog import encode_changelog, split_changelog
from stream.scaleout.refresher import PartitionedRefresher, PreparedBatch
from stream.scaleout.replica import ChangelogFollower
from stream.settings import Settings

__all__ = ["ScaleOutWorker"]

log = logging.getLogger("embstream.worker")


class _TakeOverPartitions(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: ScaleOutWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.worker.release()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.worker.take_over(assigned)


class ScaleOutWorker:
    """One of several workers of a group; see the module docstring."""

    def __init__(self, settings: Settings, store: VersionedVectorStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.assigned: list[int] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embstream-refresh")
        self.lock = asyncio.Lock()  # one batch, changelog poll or take-over at a time
        self.ready = asyncio.Event()  # set by attach(): partitions can be taken over
        self.stopping = asyncio.Event()
        self.assigned_items: list[int] = []
        self.batches_fenced = 0
        self.partitions = 0
        self.refresher: PartitionedRefresher | None = None
        self.follower: ChangelogFollower | None = None
        #: A take-over that failed (its error is raised from the run loop: the worker stops).
        self.failure: BaseException | None = None
        self._rewound: dict[TopicPartition, int] = {}

    def _topics(self) -> list[str]:
        return [self.settings.topic, self.settings.by_item_topic]

    async def start(self) -> None:
        """Connect the producer (acks from all replicas: changelog batches are published
        before they are committed), check the topics, re-send any pending outbox, and create
        the group consumer; :meth:`attach` joins the group once the replica is up to date."""
        self.producer = producer_of(self.settings, acks="all", max_request_size=4 << 20)
        await self.producer.start()
        self.partitions = await self.partition_count()
        await flush_pending_outbox(self.store, self.producer)
        self.consumer = consumer_of(self.settings)
        await self.consumer.start()

    async def stop(self) -> None:
        """Leave the group and flush; safe to call whether or not ``start`` completed."""
        self.stopping.set()  # a replay or take-over in progress gives up
        if self.follower is not None:  # attach() ran but run() did not (it stops it otherwise)
            await self.follower.stop()
            self.follower = None
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        self._executor.shutdown(wait=True)

    async def partition_count(self) -> int:
        """The partition count of ``interactions``, which every scale-out topic must share
        (a partition of each moves with the source partition it belongs to)."""
        producer = self.producer
        assert producer is not None
        topics = [self.settings.topic, *scale_out_topics(self.settings.topic, self.settings.partitions)]
        counts = {topic: len(await producer.partitions_for(topic)) for topic in topics}
        if len(set(counts.values())) != 1:
            listed = ", ".join(f"{topic} has {count}" for topic, count in counts.items())
            raise SettingsError(
                f"scale-out needs the same partition count on every one of its topics, but {listed}: "
                "create the missing ones with as many partitions as the interactions topic"
            )
        return counts[self.settings.topic]

    def readiness(self) -> tuple[bool, str]:
        follower = self.follower
        if follower is None or not self.ready.is_set():
            return False, "starting: replaying the other workers' changelog"
        return follower.readiness()

    async def attach(self, refresher: PartitionedRefresher, stop: asyncio.Event | None = None) -> None:
        """Follow the changelog, replay it to its end, then join the group (not when ``stop``
        is set meanwhile). Refuses, before joining, when the replica misses batches."""
        watcher = None
        if stop is not None:  # a stop during the replay ends it
            watcher = asyncio.ensure_future(stop.wait())
            watcher.add_done_callback(lambda task: None if task.cancelled() else self.stopping.set())
        try:
            await self._attach(refresher)
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _attach(self, refresher: PartitionedRefresher) -> None:
        self.refresher = refresher
        self.follower = follower = ChangelogFollower(
            refresher,
            self.store,
            self.settings.broker_servers,
            refresher.partitions,
            client_options=self.settings.kafka_security.aiokafka(),
        )
        await follower.start()
        self.metrics.scale_out = self.scale_out_status
        await self._replay(follower)
        if self.stopping.is_set():
            return
        if follower.truncated or follower.diverged:
            raise ReplicaError(follower.readiness()[1])
        serving = refresher.encoders()[0]
        loop = asyncio.get_running_loop()
        window = self.settings.user_window
        filled = await loop.run_in_executor(self._executor, fill_missing, self.store, serving, window)
        if filled:
            say(
                f"encoded {filled} entities at the serving version {serving.version}, which this store "
                "lacked (the worker was away while that version was rolled out)"
            )
        self.ready.set()
        assert self.consumer is not None
        if not self.stopping.is_set():
            self.consumer.subscribe(self._topics(), listener=_TakeOverPartitions(self))

    async def _replay(self, follower: ChangelogFollower) -> None:
        loop = asyncio.get_running_loop()
        started = last_said = time.monotonic()
        applied = follower.applied_batches
        while not follower.ready and not self.stopping.is_set():
            await follower.poll(loop, self._executor, timeout_ms=200)
            if time.monotonic() - last_said >= 5.0:
                last_said = time.monotonic()
                say(f"replaying the other workers' changelog: {follower.lag()} records to go")
        if follower.applied_batches > applied:
            say(
                f"changelog replayed: {follower.applied_batches - applied} batches in "
                f"{time.monotonic() - started:.1f} s"
            )

    def scale_out_status(self) -> dict[str, object]:
        follower = self.follower
        return {
            "owned": {"interactions": list(self.assigned), "by_item": list(self.assigned_items)},
            "ready": self.readiness()[0],
            "changelog_lag": None if follower is None else follower.lag(),
            "changelog_truncated": 0 if follower is None else len(follower.truncated),
            "changelog_diverged": 0 if follower is None else len(follower.diverged),
            "changelog_batches_applied": 0 if follower is None else follower.applied_batches,
            "changelog_skipped": {} if follower is None else dict(follower.skipped),
            "batches_fenced": self.batches_fenced,
        }

    async def release(self) -> None:
        """Partitions are being revoked: let the batch in progress finish first."""
        async with self.lock:
            self.assigned, self.assigned_items = [], []
            if self.follower is not None and not self.stopping.is_set():
                await self.follower.follow(set())

    async def take_over(self, assigned: Iterable[TopicPartition]) -> None:
        """Catch up the changelog of each assigned partition, fence earlier owners, and seek
        the consumer to the offsets the store now holds. aiokafka swallows a callback's
        errors, so a failure is kept and raised from the run loop (the worker stops)."""
        try:
            await self._take_over(sorted(assigned))
        except Exception as error:
            log.exception("taking over partitions failed")
            self.failure = error

    async def _take_over(self, assigned: list[TopicPartition]) -> None:
        loop = asyncio.get_running_loop()
        async with self.lock:
            if self.stopping.is_set():
                return
            consumer, follower, producer = self.consumer, self.follower, self.producer
            assert consumer is not None and follower is not None and producer is not None
            sources = [(tp.topic, tp.partition) for tp in assigned]
            generation = group_generation(consumer)
            started = loop.time()
            current = await follower.catch_up(
                sources,
                generation,
                producer,
                loop,
                self._executor,
                stopping=self.stopping.is_set,
                still_member=lambda: self._still_member(assigned),
            )
            if not current:
                log.warning("generation %d is no longer current; waiting for the next assignment", generation)
                return
            if self.stopping.is_set():
                return
            await follower.follow(sources)
            for partition in assigned:
                stored = self.store.get_offset(partition.topic, partition.partition)
                if stored is None:
                    await consumer.seek_to_beginning(partition)
                else:
                    consumer.seek(partition, stored)
            self._rewound.clear()
            self.assigned = [tp.partition for tp in assigned if tp.topic == self.settings.topic]
            self.assigned_items = [tp.partition for tp in assigned if tp.topic != self.settings.topic]
            say(
                f"generation {generation}: owns partitions {self.assigned} of {self.settings.topic!r} "
                f"and {self.assigned_items} of {self.settings.by_item_topic!r} (changelog caught up in "
                f"{loop.time() - started:.2f} s)"
            )

    async def _still_member(self, assigned: list[TopicPartition]) -> bool:
        """Whether the group still accepts this worker's generation: an offset commit at it
        (the stored offsets, or 0) succeeds only for a current member."""
        consumer = self.consumer
        assert consumer is not None
        offsets = {tp: self.store.get_offset(tp.topic, tp.partition) or 0 for tp in assigned}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError):
            return False
        return True

    async def run(
        self, stop: asyncio.Event, refresher: PartitionedRefresher, between: BetweenBatches | None = None
    ) -> None:
        """Consume until ``stop`` is set; between batches, apply the other workers' changelog
        and run ``between`` (the control plane)."""
        consumer = self.consumer
        assert consumer is not None
        if self.follower is None:
            await self.attach(refresher)
        follower = self.follower
        assert follower is not None
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self._raise_failure()
                if between is not None:
                    await between.between_batches(loop, self._executor)
                async with self.lock:
                    await follower.poll(loop, self._executor)
                fetched = await consumer.getmany(
                    timeout_ms=self.settings.batch_max_wait_ms, max_records=self.settings.batch_max_records
                )
                self.metrics.tick()
                if fetched:
                    async with self.lock:
                        await self._process(fetched, refresher, loop)
        finally:
            self.stopping.set()
            async with self.lock:  # a take-over in progress notices and returns first
                self.follower = None
                await follower.stop()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise BrokerError(
                f"taking over partitions failed ({self.failure}); the worker stops, and a "
                "restart catches up from the changelog"
            )

    def _owned(self) -> set[TopicPartition]:
        """Partitions taken over successfully (set at the end of a take-over, cleared when
        the group revokes them): records of others are never processed."""
        topic, by_item = self.settings.topic, self.settings.by_item_topic
        return {TopicPartition(topic, p) for p in self.assigned} | {
            TopicPartition(by_item, p) for p in self.assigned_items
        }

    def _continuous(self, fetched: dict[TopicPartition, list]) -> dict[TopicPartition, list]:  # type: ignore[type-arg]
        """The fetched records of partitions this worker owns, for partitions whose first
        record does not skip past the stored offset; a partition that does is rewound once to
        the stored offset (a Kafka offset gap, e.g. a transaction marker, is accepted when the
        same gap is met again)."""
        consumer = self.consumer
        assert consumer is not None
        owned = self._owned()
        kept = {}
        for tp, messages in fetched.items():
            if tp not in owned or not messages:
                continue
            stored = self.store.get_offset(tp.topic, tp.partition)
            if stored is not None and messages[0].offset > stored and self._rewound.get(tp) != stored:
                log.warning("%s[%d]: fetched from %d, but the store is at %d; reading again from there",
                            tp.topic, tp.partition, messages[0].offset, stored)  # fmt: skip
                consumer.seek(tp, stored)
                self._rewound[tp] = stored
                continue
            kept[tp] = messages
        return kept

    async def _rewind(self, partitions: Iterable[TopicPartition]) -> None:
        """Seek ``partitions`` back to the stored offsets (a batch was dropped uncommitted)."""
        consumer = self.consumer
        assert consumer is not None
        owned = consumer.assignment()
        for tp in partitions:
            if tp not in owned:
                continue
            stored = self.store.get_offset(tp.topic, tp.partition)
            if stored is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, stored)

    async def _process(
        self,
        fetched: dict[TopicPartition, list],  # type: ignore[type-arg]
        refresher: PartitionedRefresher,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        consumer, follower = self.consumer, self.follower
        assert consumer is not None and follower is not None
        self._raise_failure()
        kept = self._continuous(fetched)
        records = [record for messages in kept.values() for record in messages]
        if not records:
            return
        generation = group_generation(consumer)
        if generation < 0:  # the session expired: the rejoin assigns and seeks again
            await self._rewind(kept)
            return
        for batch in refresher.plan(records):  # one, unless the last run died mid-batch
            if not await self._apply(batch, generation, refresher, loop):
                return

    async def _apply(
        self,
        records: list,  # type: ignore[type-arg]
        generation: int,
        refresher: PartitionedRefresher,
        loop: asyncio.AbstractEventLoop,
    ) -> bool:
        """Prepare, publish and commit one batch; ``False`` when the group took its partitions
        away meanwhile (the batch is dropped, uncommitted)."""
        consumer, follower = self.consumer, self.follower
        assert consumer is not None and follower is not None
        prepared = await loop.run_in_executor(self._executor, refresher.prepare, records, generation)
        if not prepared.changelog:  # only redelivered records, below the stored offsets
            self.metrics.count(prepared.outcome)
            return True
        # Item bundles go out (acknowledged) before the changelog batch: once any worker can
        # see the batch, its bundles are ahead of every bundle a later owner of the partition
        # sends, so the item side's per-source watermarks never skip a late bundle.
        if prepared.messages:
            await publish(self.producer, prepared.messages)
        offsets = await self._publish_changelog(prepared)
        ends = {
            TopicPartition(batch.source_topic, batch.partition): batch.end for batch in prepared.changelog
        }
        try:
            await consumer.commit(ends)
            if group_generation(consumer) != generation:
                raise CommitFailedError(f"the generation moved from {generation} during the batch")
        except (CommitFailedError, IllegalStateError) as error:
            # The group gave these partitions to another worker while this batch ran. Nothing
            # is committed here: readers drop its changelog batches if a newer owner fenced
            # first, and apply them (this worker too, from the changelog) if not.
            self.batches_fenced += 1
            log.warning("batch dropped: this worker no longer owns its partitions (%s)", error)
            await self._rewind(ends)
            return False
        except KafkaError as error:
            raise BrokerError(
                f"committing source offsets failed ({error}); the worker stops, and a restart "
                "catches up from the changelog"
            ) from error
        for changelog, offset in offsets.items():
            follower.record_position(prepared.writer, changelog, offset, generation)
        await loop.run_in_executor(self._executor, prepared.writer.commit)
        self.metrics.count(prepared.outcome)
        return True

    async def _publish_changelog(self, prepared: PreparedBatch) -> dict[TopicPartition, int]:
        """Send each changelog batch (in parts when large), in order per partition; returns
        the offset of the last part per changelog partition."""
        producer = self.producer
        assert producer is not None
        pending = []
        for batch in prepared.changelog:
            changelog = TopicPartition(changelog_topic(batch.source_topic), batch.partition)
            for part in split_changelog(batch):
                future = await producer.send(
                    changelog.topic, encode_changelog(part), partition=changelog.partition
                )
                pending.append((changelog, future))
        last: dict[TopicPartition, int] = {}
        for changelog, future in pending:
            metadata = await future
            last[changelog] = max(last.get(changelog, -1), metadata.offset)
        return last
