"""The refresher of a worker that shares its consumer group (``EMBSTREAM_SCALE_OUT``).

A user's state belongs to the ``interactions`` partition its events are keyed to; an item's
state belongs to the item's partition of ``<topic>.by-item``. A batch is *prepared* (state
updated and encoded into an uncommitted store write, plus the messages to publish: one
changelog batch per source partition, item bundles, embedding updates and dead letters);
the worker publishes those messages, checks it still owns the partitions, and only then
*commits* the write. The changelog is therefore never behind a worker's store, and a batch
a crash cut short is applied again from the source, by whichever worker owns it next.

It is built on the single worker's write path (:class:`stream.ingest.refresher.EmbeddingRefresher`
and :func:`~stream.ingest.refresher.write_entities`): the same decoding, poison isolation,
crash guard, state update, encoding and writes.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np
import orjson

from models.encoder import Encoder
from models.features import EVENT_TYPES, tag_hashes
from models.state_batch import EventColumns, event_columns
from store.vector_store import VersionedVectorStore
from store.writer import StoreWriter
from stream.ingest.events import MAX_EVENT_BYTES, Interaction
from stream.ingest.outbox import OutgoingMessage
from stream.ingest.records import BatchOutcome, ConsumedRecord, SourceRecord
from stream.ingest.refresher import (
    KEY_NOT_USER_ID,
    EmbeddingRefresher,
    Refreshed,
    refresh_entities,
    write_entities,
)
from stream.kafka.topics import by_item_topic
from stream.scaleout.changelog import NO_OFFSET, ChangelogBatch, ItemBundle, decode_bundle, encode_bundle

__all__ = ["KEY_NOT_USER_ID", "ChangelogOutcome", "PartitionedRefresher", "PreparedBatch"]

_U64 = struct.Struct("<Q")
_NAN = float("nan")


def item_partition(item_id: str, partitions: int) -> int:
    """The ``<topic>.by-item`` partition that owns ``item_id``."""
    return zlib.crc32(item_id.encode("utf-8")) % partitions


@dataclass
class PreparedBatch:
    """A batch applied to an uncommitted store write, and what to publish before committing."""

    writer: StoreWriter
    outcome: BatchOutcome
    changelog: list[ChangelogBatch] = field(default_factory=list)
    #: item bundles first, then embedding updates and dead letters
    messages: list[OutgoingMessage] = field(default_factory=list)


@dataclass
class ChangelogOutcome:
    applied: bool
    reason: str  # "applied", "duplicate", "gap", "fence"


def _assign_owners(
    refreshed: Refreshed, partitions: list[int], ids_by_partition: dict[int, list[str]]
) -> None:
    """Add each entity of ``refreshed`` to the source partition of its events
    (``partitions[i]``: the partition of applied event ``i``)."""
    owner = np.zeros(len(refreshed.ids), dtype=np.int64)
    owner[refreshed.rows] = np.asarray(partitions, dtype=np.int64)
    for entity_id, partition in zip(refreshed.ids, owner.tolist(), strict=True):
        ids_by_partition[partition].append(entity_id)


def _watermark_name(by_item: str, item_partition: int, source_partition: int) -> str:
    return f"watermark:{by_item}/{item_partition}/{source_partition}"


class PartitionedRefresher:
    """Prepares batches of ``interactions`` (user side) and ``<topic>.by-item`` (item side)
    and applies changelog batches written by other workers."""

    def __init__(
        self,
        store: VersionedVectorStore,
        encoders: Encoder | Callable[[], Sequence[Encoder]],
        *,
        topic: str,
        partitions: int,
        updates_topic: str,
        dlq_topic: str,
        user_window: int = 50,
        max_future_skew_ms: int = 86_400_000,
        max_event_bytes: int = MAX_EVENT_BYTES,
        clock_ms: Callable[[], int] | None = None,
        updates_format: str = "per-vector",
    ) -> None:
        extra = {} if clock_ms is None else {"clock_ms": clock_ms}
        self.batches = EmbeddingRefresher(
            store,
            encoders,
            updates_topic=updates_topic,
            dlq_topic=dlq_topic,
            user_window=user_window,
            max_future_skew_ms=max_future_skew_ms,
            max_event_bytes=max_event_bytes,
            updates_format=updates_format,
            **extra,
        )
        self.store = store
        self.encoders = self.batches.encoders
        self.topic = topic
        self.by_item = by_item_topic(topic)
        self.partitions = partitions

    # ----- batches this worker owns ----------------------------------------------------------

    def plan(self, records: Sequence[SourceRecord]) -> list[list[SourceRecord]]:
        return self.batches.plan(records)

    def prepare(self, records: Sequence[SourceRecord], generation: int) -> PreparedBatch:
        """Apply ``records`` (either topic, in partition order) to an uncommitted write."""
        guard = self.batches.guard
        started = guard.begin(records)
        for record in started.rehearse:  # after a death: each suspect alone, thrown away
            with guard.rehearsing(record):
                self._prepare([record], generation, started.quarantine)
        prepared = self._prepare(records, generation, started.quarantine)
        guard.finish(prepared.writer, records)
        return prepared

    def _prepare(
        self, records: Sequence[SourceRecord], generation: int, quarantine: set[tuple[str, int, int]]
    ) -> PreparedBatch:
        prepared = PreparedBatch(self.store.writer(), BatchOutcome())
        user_records = [r for r in records if r.topic == self.topic]
        item_records = [r for r in records if r.topic == self.by_item]
        prepared.outcome.consumed = len(user_records)
        if user_records:
            self._prepare_users(user_records, generation, prepared, quarantine)
        if item_records:
            self._prepare_items(item_records, generation, prepared)
        return prepared

    def _prepare_users(
        self,
        records: list[SourceRecord],
        generation: int,
        prepared: PreparedBatch,
        quarantine: set[tuple[str, int, int]],
    ) -> None:
        outcome, batches = prepared.outcome, self.batches
        decoded = batches.decode(records, outcome, quarantine, prepared.messages, key_is_user_id=True)
        starts = {p: NO_OFFSET if start is None else start for (_, p), start in decoded.starts.items()}
        ends = {p: end for (_, p), end in decoded.ends.items()}
        ids_by_partition: dict[int, list[str]] = {partition: [] for partition in ends}
        refreshed: Refreshed | None = None
        written_at = 0
        if decoded.events:
            sources = decoded.sources
            (refreshed,), kept = batches.refresh(
                ("user",),
                event_columns(decoded.events),
                lambda row, reason: batches.reject(outcome, prepared.messages, sources[row], reason),
            )
            outcome.applied = len(kept)
            partitions = [sources[row].partition for row in kept]
            _assign_owners(refreshed, partitions, ids_by_partition)
            applied = [decoded.events[row] for row in kept]
            prepared.messages.extend(
                self._bundles(applied, partitions, [sources[row].offset for row in kept])
            )
            written_at = batches.stage(prepared.writer, refreshed, outcome, prepared.messages)
        prepared.changelog += self._changelog(
            prepared.writer, self.topic, starts, ends, ids_by_partition, refreshed, written_at, generation
        )

    def _in_range(self, record: SourceRecord, starts: dict[int, int], ends: dict[int, int]) -> bool:
        """Whether a bundle is new to the store (not below its partition's stored offset);
        notes each partition's stored offset (``starts``) and the next offset (``ends``)."""
        partition = record.partition
        if partition not in starts:
            stored = self.store.get_offset(self.by_item, partition)
            starts[partition] = NO_OFFSET if stored is None else stored
        if starts[partition] != NO_OFFSET and record.offset < starts[partition]:
            return False
        ends[partition] = record.offset + 1
        return True

    def _bundles(
        self, events: list[Interaction], partitions: list[int], offsets: list[int]
    ) -> list[OutgoingMessage]:
        """One bundle per (source partition, item partition), sent to the item partition."""
        grouped: dict[tuple[int, int], list[int]] = {}
        for index, event in enumerate(events):
            target = item_partition(event.item_id, self.partitions)
            grouped.setdefault((partitions[index], target), []).append(index)
        messages = []
        for (source, target), rows in grouped.items():
            bundle = ItemBundle(
                source_partition=source,
                offsets=np.fromiter((offsets[i] for i in rows), np.int64, len(rows)).tobytes(),
                item_ids=[events[i].item_id for i in rows],
                type_codes=np.fromiter((events[i].type_code for i in rows), np.uint8, len(rows)).tobytes(),
                values=np.fromiter(
                    (_NAN if events[i].value is None else events[i].value for i in rows),
                    np.float32,
                    len(rows),
                ).tobytes(),
                timestamps_ms=np.fromiter((events[i].ts_ms for i in rows), np.int64, len(rows)).tobytes(),
                item_tags={
                    entry: list(tags)
                    for entry, i in enumerate(rows)
                    if (tags := events[i].item_tags) is not None
                },
            )
            messages.append(OutgoingMessage(self.by_item, None, encode_bundle(bundle), partition=target))
        return messages

    def _prepare_items(self, records: list[SourceRecord], generation: int, prepared: PreparedBatch) -> None:
        outcome, writer, batches = prepared.outcome, prepared.writer, self.batches
        starts: dict[int, int] = {}
        ends: dict[int, int] = {}
        watermarks: dict[int, dict[int, int]] = {}
        item_ids: list[str] = []
        codes: list[int] = []
        values: list[float] = []
        stamps: list[int] = []
        tags: dict[int, list[str]] = {}  # by row of the item events
        sources: list[SourceRecord] = []  # the bundle each item event came in
        for record in records:
            partition = record.partition
            if partition not in watermarks:
                watermarks[partition] = self.item_watermarks(partition)
            if not self._in_range(record, starts, ends):
                continue  # a bundle this partition's state already includes
            try:
                bundle = decode_bundle(record.value or b"")
                entries = list(bundle.columns())
            except (msgspec.DecodeError, ValueError):
                batches.reject(outcome, prepared.messages, record, "not an item bundle")
                continue
            marks = watermarks[partition]
            floor = marks.get(bundle.source_partition, 0)
            for entry, (offset, item_id, code, value, ts_ms) in enumerate(entries):
                if offset < floor:
                    outcome.duplicates += 1
                    continue
                if entry in bundle.item_tags:
                    tags[len(item_ids)] = bundle.item_tags[entry]
                item_ids.append(item_id)
                codes.append(code)
                values.append(value)
                stamps.append(ts_ms)
                sources.append(record)
            if entries:
                marks[bundle.source_partition] = max(floor, entries[-1][0] + 1)
        ids_by_partition: dict[int, list[str]] = {partition: [] for partition in ends}
        refreshed: Refreshed | None = None
        written_at = 0
        if item_ids:
            columns = EventColumns(
                item_ids, item_ids, np.asarray(codes, np.uint8), np.asarray(values, np.float32),
                np.asarray(stamps, np.int64), {row: tag_hashes(t) for row, t in tags.items()},
            )  # fmt: skip

            def dead_letter(row: int, reason: str) -> None:
                event: dict[str, object] = {
                    "item_id": item_ids[row], "type": EVENT_TYPES[codes[row]], "ts": stamps[row]
                }  # fmt: skip
                if not math.isnan(values[row]):
                    event["value"] = values[row]
                if row in tags:
                    event["item_tags"] = tags[row]
                bundle = sources[row]  # dead-lettered as the event, with the bundle's source
                record = ConsumedRecord(
                    bundle.topic, bundle.partition, bundle.offset, None, orjson.dumps(event), bundle.timestamp
                )
                batches.reject(outcome, prepared.messages, record, reason)

            (refreshed,), kept = batches.refresh(("item",), columns, dead_letter)
            outcome.item_events = len(kept)
            _assign_owners(refreshed, [sources[row].partition for row in kept], ids_by_partition)
            written_at = batches.stage(writer, refreshed, outcome, prepared.messages)
        for partition in ends:
            for source, mark in watermarks[partition].items():
                writer.put_meta(_watermark_name(self.by_item, partition, source), _U64.pack(mark))
        prepared.changelog += self._changelog(
            writer,
            self.by_item,
            starts,
            ends,
            ids_by_partition,
            refreshed,
            written_at,
            generation,
            watermarks,
        )

    def _changelog(
        self,
        writer: StoreWriter,
        source_topic: str,
        starts: dict[int, int],
        ends: dict[int, int],
        ids_by_partition: dict[int, list[str]],
        refreshed: Refreshed | None,
        written_at: int,
        generation: int,
        watermarks: dict[int, dict[int, int]] | None = None,
    ) -> list[ChangelogBatch]:
        """Stage each source partition's next offset; describe its part of the batch."""
        kind = "user" if source_topic == self.topic else "item"
        ids = [] if refreshed is None else refreshed.ids
        states = [] if refreshed is None else refreshed.states
        encoded = {} if refreshed is None else refreshed.vectors
        row_of = {entity_id: row for row, entity_id in enumerate(ids)}
        batches = []
        for partition, end in ends.items():
            writer.set_offset(source_topic, partition, end)
            partition_ids = ids_by_partition[partition]
            rows = [row_of[entity_id] for entity_id in partition_ids]
            batches.append(
                ChangelogBatch(
                    source_topic=source_topic,
                    partition=partition,
                    start=starts[partition],
                    end=end,
                    generation=generation,
                    kind=kind,
                    ids=partition_ids,
                    states=[states[row] for row in rows],
                    versions=list(encoded),
                    vectors=[np.ascontiguousarray(m[rows], np.float32).tobytes() for m in encoded.values()],
                    dims=[int(m.shape[1]) for m in encoded.values()],
                    written_at=written_at,
                    watermarks=dict((watermarks or {}).get(partition, {})),
                )
            )
        return batches

    def item_watermarks(self, partition: int) -> dict[int, int]:
        """Per source partition of ``interactions``: the next source offset whose item events
        this item partition has not applied yet."""
        marks = {}
        for source in range(self.partitions):
            raw = self.store.get_meta(_watermark_name(self.by_item, partition, source))
            if raw is not None:
                marks[source] = _U64.unpack(raw)[0]
        return marks

    # ----- batches other workers wrote ---------------------------------------------------------

    def apply_changelog(self, batch: ChangelogBatch) -> ChangelogOutcome:
        """Apply a batch another worker published (or this worker, before a crash), if it
        continues this store's copy of its partition; encode any refresh version it lacks."""
        if batch.fence:
            return ChangelogOutcome(False, "fence")
        marker = self.store.get_offset(batch.source_topic, batch.partition)
        if marker is not None and batch.end <= marker:
            return ChangelogOutcome(False, "duplicate")
        if marker is not None and batch.start != marker:
            return ChangelogOutcome(False, "gap")
        kind, ids = batch.kind, batch.ids
        vectors = {version: batch.matrix(index) for index, version in enumerate(batch.versions)}
        lacking = [encoder for encoder in self.encoders() if encoder.version not in vectors]
        if ids and lacking:  # e.g. a version staged here only: encoded from the batch's states
            stored = dict(zip(ids, batch.states, strict=True))
            vectors |= refresh_entities(kind, None, stored, lacking, self.batches.user_window, ids).vectors
        writer = self.store.writer()
        write_entities(writer, kind, ids, vectors, batch.written_at, batch.states)
        writer.set_offset(batch.source_topic, batch.partition, batch.end)
        for source, mark in batch.watermarks.items():
            writer.put_meta(_watermark_name(batch.source_topic, batch.partition, source), _U64.pack(mark))
        writer.commit()
        return ChangelogOutcome(True, "applied")
