"""Following the changelog: every node keeps a replica of the partitions it does not own.

Reads the changelog topics without a consumer group, applies complete batches through
:meth:`PartitionedRefresher.apply_changelog`, and keeps, per changelog partition, the next
offset to read and the highest writer generation seen in the store (meta
``changelog:<topic>/<partition>``). A batch from a lower generation than one already seen
comes from a worker that lost its partitions (a fenced "zombie") and is dropped.

When this node is assigned a source partition it first *catches up* that partition's
changelog to its end, then publishes a fence (its own generation) and reads up to it, so
anything a previous owner published before the fence is applied and anything after it is
dropped by every reader.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from store.vector_store import VersionedVectorStore
from store.writer import StoreWriter
from stream.errors import ReplicaError
from stream.kafka.topics import changelog_topic
from stream.scaleout.changelog import ChangelogAssembler, ChangelogBatch, decode_changelog, encode_changelog
from stream.scaleout.refresher import PartitionedRefresher

__all__ = ["ChangelogFollower", "ReplicaError", "position_name"]

log = logging.getLogger("embstream.replica")
_POSITION = struct.Struct("<QQ")  # next changelog offset, highest generation seen


def position_name(changelog: str, partition: int) -> str:
    return f"changelog:{changelog}/{partition}"


class ChangelogFollower:
    """The changelog reader of one worker."""

    def __init__(
        self,
        refresher: PartitionedRefresher,
        store: VersionedVectorStore,
        servers: list[str],
        partitions: int,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.refresher = refresher
        self.store = store
        self.servers = servers
        self.partitions = partitions
        self.client_options = client_options or {}
        self.sources = [refresher.topic, refresher.by_item]
        self.consumer: AIOKafkaConsumer | None = None
        self.assembler = ChangelogAssembler()
        self.following: set[TopicPartition] = set()
        self.applied_batches = 0
        self.skipped: Counter[str] = Counter()
        #: Set once every followed partition has been read to its end since start: the node
        #: then holds every id the others had written (``GET /readyz``).
        self.ready = False
        #: Changelog partitions whose retained log starts after this store's position.
        self.truncated: set[TopicPartition] = set()
        #: Changelog partitions where a batch did not continue this store (one was missed).
        self.diverged: set[TopicPartition] = set()
        #: In memory: the offset after the last record read per partition (a half-published
        #: batch at a partition's end keeps the stored position before it, not the lag up).
        self.read_to: dict[TopicPartition, int] = {}

    def changelog_of(self, source_topic: str, partition: int) -> TopicPartition:
        return TopicPartition(changelog_topic(source_topic), partition)

    @property
    def all_partitions(self) -> set[TopicPartition]:
        return {self.changelog_of(s, p) for s in self.sources for p in range(self.partitions)}

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="embstream-changelog",
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=32 << 20,
            **self.client_options,
        )
        await self.consumer.start()
        await self.follow(set())

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    # ----- positions -----------------------------------------------------------------------------

    def position(self, changelog: TopicPartition) -> tuple[int, int]:
        raw = self.store.get_meta(position_name(changelog.topic, changelog.partition))
        return _POSITION.unpack(raw) if raw else (0, 0)

    def record_position(
        self, writer: StoreWriter, changelog: TopicPartition, offset: int, generation: int
    ) -> None:
        """Stage the position after this node's own batch at ``offset`` (committed with it)."""
        _, seen = self.position(changelog)
        writer.put_meta(
            position_name(changelog.topic, changelog.partition),
            _POSITION.pack(offset + 1, max(seen, generation)),
        )

    def _save_position(self, changelog: TopicPartition, offset: int, generation: int) -> None:
        writer = self.store.writer()
        writer.put_meta(
            position_name(changelog.topic, changelog.partition), _POSITION.pack(offset, generation)
        )
        writer.commit()

    # ----- following --------------------------------------------------------------------------

    async def follow(self, owned_sources: Iterable[tuple[str, int]]) -> None:
        """Read every changelog partition but those of ``owned_sources``, from the stored
        positions."""
        assert self.consumer is not None
        owned = {self.changelog_of(topic, partition) for topic, partition in owned_sources}
        self.following = self.all_partitions - owned
        await self._assign(self.following)

    async def _assign(self, partitions: set[TopicPartition]) -> None:
        assert self.consumer is not None
        self.consumer.assign(sorted(partitions))
        if not partitions:
            return
        starts = await self.consumer.beginning_offsets(sorted(partitions))
        for changelog in partitions:
            self.assembler.reset(*self._source_of(changelog))
            position = self.position(changelog)[0]
            # A truncated partition is not applied, and its stored position stays where it
            # was, so the truncation is found again after a restart.
            if position < starts[changelog] and changelog not in self.truncated:
                self.truncated.add(changelog)
                log.error(
                    "changelog %s[%d] now starts at offset %d but this store has read it only up to "
                    "%d: entities last changed in the deleted part are missing here. Seed this worker "
                    "from a recent backup of any worker (embstream store backup / restore).",
                    changelog.topic,
                    changelog.partition,
                    starts[changelog],
                    position,
                )
            self.consumer.seek(changelog, max(position, starts[changelog]))
            self.read_to[changelog] = max(position, starts[changelog])

    def _source_of(self, changelog: TopicPartition) -> tuple[str, int]:
        return changelog.topic.removesuffix(".changelog"), changelog.partition

    async def poll(self, loop: asyncio.AbstractEventLoop, executor: Executor, timeout_ms: int = 0) -> int:
        """Apply what the followed partitions have; returns the number of records read."""
        assert self.consumer is not None
        if not self.following:
            self.ready = True
            return 0
        fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=200)
        read = 0
        for changelog, records in fetched.items():
            read += len(records)
            await loop.run_in_executor(executor, self._handle_all, changelog, records)
        if not self.ready and self.lag() == 0:
            self.ready = True
        return read

    def lag(self) -> int | None:
        """Changelog records this node has not applied yet, over the partitions it follows
        (``None`` until the broker has told the end of each)."""
        if self.consumer is None:
            return None
        total = 0
        assigned = self.consumer.assignment()
        for changelog in self.following:
            # not assigned: a take-over is reading only its own partitions right now
            highwater = self.consumer.highwater(changelog) if changelog in assigned else None
            if highwater is None:
                return None
            read = max(self.position(changelog)[0], self.read_to.get(changelog, 0))
            total += max(0, highwater - read)
        return total

    def _handle_all(self, changelog: TopicPartition, records: list[Any]) -> None:
        for record in records:
            self._handle(changelog, record.offset, record.value)
            self.read_to[changelog] = record.offset + 1

    def _handle(self, changelog: TopicPartition, offset: int, raw: bytes | None) -> None:
        """Apply one changelog record; the stored position moves past it once the batch it
        belongs to is applied (or dropped), never into the middle of a batch."""
        if changelog in self.truncated or changelog in self.diverged:
            return  # not applied any more: this store misses batches of it (readiness says so)
        next_offset, seen = self.position(changelog)
        if offset < next_offset:
            return
        pending = self.assembler.pending(*self._source_of(changelog))
        try:
            part = decode_changelog(raw or b"")
        except (msgspec.DecodeError, ValueError):
            self.skipped["malformed"] += 1
            if not pending:  # else the position stays before the pending batch's first part
                self._save_position(changelog, offset + 1, seen)
            return
        if part.fence and part.restart:
            # the group's generations started again (the group expired and was recreated);
            # the new owner checked it is a current member before saying so
            self.assembler.reset(part.source_topic, part.partition)
            self._save_position(changelog, offset + 1, part.generation)
            return
        if part.generation < seen:
            self.skipped["fenced"] += 1  # a worker that lost the partition, writing late
            if not pending:
                self._save_position(changelog, offset + 1, seen)
            return
        batch = self.assembler.add(part)
        if batch is None:
            return  # more parts to come: the position stays before the batch's first part
        outcome = self.refresher.apply_changelog(batch)
        if outcome.applied:
            self.applied_batches += 1
        elif outcome.reason == "gap":
            # The stored position stays before this batch, so the gap is found again after a
            # restart; the partition is not applied any more.
            self.skipped["gap"] += 1
            self.diverged.add(changelog)
            log.error(
                "changelog %s[%d] offset %d: batch %d..%d does not continue this store's offset; "
                "this replica has missed a batch: seed it from a backup of another worker",
                changelog.topic,
                changelog.partition,
                offset,
                batch.start,
                batch.end,
            )
            return
        self._save_position(changelog, offset + 1, max(seen, batch.generation))

    def readiness(self) -> tuple[bool, str]:
        """Whether this node holds every id the other workers wrote, and why not."""
        if self.truncated or self.diverged:
            names = ", ".join(f"{c.topic}[{c.partition}]" for c in sorted(self.truncated | self.diverged))
            return False, f"missing changelog batches of {names}: seed this worker from a backup"
        if not self.ready:
            return False, "replaying the other workers' changelog"
        return True, "holds every partition's vectors"

    # ----- taking over partitions ---------------------------------------------------------------

    async def catch_up(
        self,
        owned_sources: list[tuple[str, int]],
        generation: int,
        producer: AIOKafkaProducer,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        stopping: Callable[[], bool] = lambda: False,
        still_member: Callable[[], Awaitable[bool]] | None = None,
    ) -> bool:
        """Bring this node's copy of ``owned_sources`` up to the changelog's end, fence
        earlier owners with ``generation``, and read up to the fence. Returns False when
        stopping, or when ``generation`` turned out not to be current any more.

        A partition whose changelog has seen a higher generation than ``generation`` means
        either that this worker is behind the group (then ``still_member`` says no) or that
        the group's generations started again; then a *restart* fence resets what readers
        expect.
        """
        assert self.consumer is not None
        targets = {self.changelog_of(topic, partition) for topic, partition in owned_sources}
        if not targets:
            return True
        await self._assign(targets)
        fences = await self._fence(targets, generation, producer)
        if not await self._read_past(fences, loop, executor, stopping):
            return False
        behind = {c for c in targets if self.position(c)[1] > generation}
        if behind:
            if still_member is None or not await still_member():
                return False
            fences = await self._fence(behind, generation, producer, restart=True)
            if not await self._read_past(fences, loop, executor, stopping):
                return False
        missing = targets & (self.truncated | self.diverged)
        if missing:
            raise ReplicaError(
                "cannot own "
                + ", ".join(f"{c.topic}[{c.partition}]" for c in sorted(missing))
                + ": this store misses changelog batches of it; seed this worker from a backup of "
                "another worker (embstream store backup / restore)"
            )
        return True

    async def _fence(
        self, targets: set[TopicPartition], generation: int, producer: AIOKafkaProducer, restart: bool = False
    ) -> dict[TopicPartition, int]:
        fences: dict[TopicPartition, int] = {}
        for changelog in sorted(targets):
            topic, partition = self._source_of(changelog)
            marker = self.store.get_offset(topic, partition)
            fence = ChangelogBatch(
                source_topic=topic,
                partition=partition,
                start=-1 if marker is None else marker,
                end=-1 if marker is None else marker,
                generation=generation,
                kind="user" if topic == self.refresher.topic else "item",
                fence=True,
                restart=restart,
            )
            sent = await producer.send_and_wait(changelog.topic, encode_changelog(fence), partition=partition)
            fences[changelog] = sent.offset
        return fences

    async def _read_past(
        self,
        offsets: dict[TopicPartition, int],
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        stopping: Callable[[], bool],
    ) -> bool:
        """Apply each partition's records up to and including ``offsets[partition]``."""
        assert self.consumer is not None
        while not stopping():
            behind = [c for c in offsets if self.position(c)[0] <= offsets[c]]
            if not behind:
                return True
            fetched = await self.consumer.getmany(*behind, timeout_ms=200, max_records=200)
            for changelog, records in fetched.items():
                await loop.run_in_executor(executor, self._handle_all, changelog, records)
        return False
