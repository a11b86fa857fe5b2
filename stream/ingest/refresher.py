"""Where a vector gets written: one micro-batch of consumed records in, entity state updated,
embeddings recomputed with the active encoder version, everything committed atomically.

The batch is coalesced: an entity touched by many events in the batch is encoded once, and
all users (then all items) of the batch go through the encoder in one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import orjson

from models.encoder import Encoder
from models.state_batch import EventColumns, apply_item_events, apply_user_events, event_columns
from store.vector_store import StoreWriter, VersionedVectorStore
from stream.ingest.events import MAX_EVENT_BYTES, Interaction, Rejection, parse_event
from stream.ingest.outbox import OutgoingMessage, encode_outbox
from stream.ingest.poison import POISON_CRASHED, CrashGuard, isolate

__all__ = [
    "MAX_DEAD_LETTER_BYTES",
    "BatchOutcome",
    "ConsumedRecord",
    "EmbeddingRefresher",
    "Refreshed",
    "SourceRecord",
    "distinct",
    "refresh_entities",
]

#: Dead letters carry the original bytes up to this size (and a ``truncated.from`` header
#: beyond it), so one oversized record can never make the dead-letter topic refuse a batch.
MAX_DEAD_LETTER_BYTES = 512 * 1024


def distinct(keys: list[str]) -> tuple[list[str], np.ndarray]:
    """The distinct keys in first-seen order, and each key's row among them."""
    index = {key: row for row, key in enumerate(dict.fromkeys(keys))}
    return list(index), np.fromiter(map(index.__getitem__, keys), np.int64, len(keys))


def _latest_per_row(rows: int, row_of: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    latest = np.zeros(rows, dtype=np.int64)
    np.maximum.at(latest, row_of, timestamps)
    return latest


@dataclass
class Refreshed:
    """One kind's entities touched by a batch: new states and vectors, not yet written."""

    kind: str
    ids: list[str]
    rows: np.ndarray  # int64 [events]: each event's row among ``ids``
    states: list[bytes]
    vectors: dict[int, np.ndarray]  # per version, in the order of the encoders
    latest_ms: np.ndarray  # int64 [ids]: the latest event time of each entity


def refresh_entities(
    kind: str,
    columns: EventColumns,
    stored: Mapping[str, bytes | None],
    encoders: Sequence[Encoder],
    user_window: int,
) -> Refreshed:
    """Apply ``columns`` to the ``stored`` states of the entities of ``kind`` they touch and
    encode each entity once per version. Pure: reads and writes nothing."""
    ids, rows = distinct(columns.user_ids if kind == "user" else columns.item_ids)
    states_before = [stored[entity_id] for entity_id in ids]
    vectors: dict[int, np.ndarray] = {}
    if kind == "user":
        states, histories = apply_user_events(ids, states_before, user_window, columns, rows)
        for encoder in encoders:
            vectors[encoder.version] = encoder.encode_users(histories)
    else:
        states, counts = apply_item_events(ids, states_before, columns, rows)
        for encoder in encoders:
            vectors[encoder.version] = encoder.encode_items(counts)
    latest = _latest_per_row(len(ids), rows, columns.timestamps_ms)
    return Refreshed(kind, ids, rows, states, vectors, latest)


class SourceRecord(Protocol):
    """The parts of a consumed Kafka record the refresher reads (aiokafka's records have
    them, so the worker hands them over without a copy)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...  # epoch milliseconds


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A :class:`SourceRecord` built by hand (tests, tools)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


@dataclass
class BatchOutcome:
    consumed: int = 0
    applied: int = 0
    item_events: int = 0  # events applied to item state (with scale-out, on the item side)
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    #: records dead-lettered because they killed the worker twice (:class:`CrashGuard`)
    quarantined: int = 0
    written: dict[tuple[str, int], int] = field(default_factory=dict)
    lags_seconds: list[float] = field(default_factory=list)
    outbox: list[OutgoingMessage] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class EmbeddingRefresher:
    """Applies batches to a store with one fixed encoder version."""

    def __init__(
        self,
        store: VersionedVectorStore,
        encoders: Encoder | Callable[[], Sequence[Encoder]],
        *,
        updates_topic: str,
        dlq_topic: str,
        user_window: int = 50,
        max_future_skew_ms: int = 86_400_000,
        max_event_bytes: int = MAX_EVENT_BYTES,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        # One fixed encoder, or a provider of the versions to write (serving first, then a
        # staged version during a rollout: dual write).
        self.encoders: Callable[[], Sequence[Encoder]] = (
            encoders if callable(encoders) else (lambda: [encoders])  # type: ignore[list-item]
        )
        self.updates_topic = updates_topic
        self.dlq_topic = dlq_topic
        self.user_window = user_window
        self.max_future_skew_ms = max_future_skew_ms
        self.max_event_bytes = max_event_bytes
        self.clock_ms = clock_ms
        self.guard = CrashGuard(store)

    def plan(self, records: Sequence[SourceRecord]) -> list[list[SourceRecord]]:
        """The batches to apply ``records`` in: one, unless the last run died applying some
        of them (then those go one at a time, first; see :class:`CrashGuard`)."""
        return self.guard.plan(records)

    def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        """Apply ``records`` (in partition order) and commit state, vectors, offsets, outbox."""
        started = self.guard.begin(records)
        for record in started.rehearse:  # after a death: each suspect alone, thrown away
            with self.guard.rehearsing(record):
                self._apply([record], self.store.writer(), started.quarantine)
        writer = self.store.writer()
        outcome = self._apply(records, writer, started.quarantine)
        self.guard.finish(writer, records)
        if outcome.outbox:
            writer.set_outbox(encode_outbox(outcome.outbox))
        writer.commit()
        return outcome

    def _apply(
        self, records: Sequence[SourceRecord], writer: StoreWriter, quarantine: set[tuple[str, int, int]]
    ) -> BatchOutcome:
        """Stage ``records`` into ``writer``: states, vectors, next offsets, and (in the
        outcome) the messages to send."""
        outcome = BatchOutcome(consumed=len(records))
        now_ms = self.clock_ms()
        next_offsets: dict[tuple[str, int], int] = {}
        stored: dict[tuple[str, int], int | None] = {}
        events: list[Interaction] = []
        sources: list[SourceRecord] = []
        for record in records:
            source = (record.topic, record.partition)
            if source not in stored:
                stored[source] = self.store.get_offset(*source)
            floor = stored[source]
            if floor is not None and record.offset < floor:
                outcome.duplicates += 1
                continue
            next_offsets[source] = record.offset + 1
            if quarantine and (record.topic, record.partition, record.offset) in quarantine:
                outcome.quarantined += 1
                self._reject(outcome, record, POISON_CRASHED)
                continue
            parsed = parse_event(
                record.value, record.timestamp, now_ms, self.max_future_skew_ms, self.max_event_bytes
            )
            if isinstance(parsed, Rejection):
                self._reject(outcome, record, parsed.reason)
            else:
                events.append(parsed)
                sources.append(record)
        if events:
            refreshed, kept = self.refresh(
                ("user", "item"),
                event_columns(events),
                lambda row, reason: self._reject(outcome, sources[row], reason),
            )
            outcome.applied = outcome.item_events = len(kept)
            for kind_refreshed in refreshed:
                self.stage(writer, kind_refreshed, outcome)
        for (topic, partition), offset in next_offsets.items():
            writer.set_offset(topic, partition, offset)
        return outcome

    def refresh(
        self, kinds: Sequence[str], columns: EventColumns, dead_letter: Callable[[int, str], None]
    ) -> tuple[list[Refreshed], list[int]]:
        """New states and vectors of the entities of ``kinds`` that ``columns`` touch (one
        :class:`Refreshed` per kind), and the rows of the events applied. Events that make
        this raise are left out and handed to ``dead_letter(row, reason)``; the others are
        applied (:func:`stream.ingest.poison.isolate`)."""
        stored: dict[str, dict[str, bytes | None]] = {}
        for kind in kinds:  # read once: a failing read is the store's failure, never a record's
            ids = list(dict.fromkeys(columns.user_ids if kind == "user" else columns.item_ids))
            stored[kind] = dict(zip(ids, self.store.get_states(kind, ids), strict=True))
        encoders = list(self.encoders())

        def run(rows: Sequence[int] | None) -> list[Refreshed]:
            chosen = columns if rows is None else columns.take(rows)
            return [
                refresh_entities(kind, chosen, stored[kind], encoders, self.user_window) for kind in kinds
            ]

        refreshed, poison = isolate(run, len(columns))
        for row, reason in sorted(poison.items()):
            dead_letter(row, reason)
        return refreshed, [row for row in range(len(columns)) if row not in poison]

    def stage(
        self,
        writer: StoreWriter,
        refreshed: Refreshed,
        outcome: BatchOutcome,
        messages: list[OutgoingMessage] | None = None,
    ) -> int:
        """Put ``refreshed`` into ``writer``, count it in ``outcome``, and queue its update
        messages (in ``messages``, else the outcome's outbox); returns the time written."""
        messages = outcome.outbox if messages is None else messages
        kind, ids = refreshed.kind, refreshed.ids
        for entity_id, state in zip(ids, refreshed.states, strict=True):
            writer.put_state(kind, entity_id, state)
        written_at = self.clock_ms()
        for position, (version, vectors) in enumerate(refreshed.vectors.items()):
            writer.put_vectors(kind, ids, version, vectors, written_at)
            outcome.written[(kind, version)] = len(ids)
            if position == 0:  # freshness is measured on the serving version
                lags = np.maximum(0.0, (written_at - refreshed.latest_ms) / 1000.0)
                outcome.lags_seconds.extend(lags.tolist())
            messages.extend(self._updates(kind, ids, version, written_at, refreshed.latest_ms))
        return written_at

    def _updates(
        self, kind: str, ids: list[str], version: int, written_at: int, event_ts: np.ndarray
    ) -> list[OutgoingMessage]:
        """One ``embeddings.updates`` message per entity written."""
        topic, prefix = self.updates_topic, f"{kind}:".encode()
        head = b'{"kind":"' + kind.encode() + b'","id":'
        tail = b',"version":%d,"ts":%d,"event_ts":' % (version, written_at)
        dumps = orjson.dumps
        return [
            OutgoingMessage(
                topic, prefix + entity_id.encode(), b"%s%s%s%d}" % (head, dumps(entity_id), tail, ts)
            )
            for entity_id, ts in zip(ids, event_ts.tolist(), strict=True)
        ]

    def _reject(self, outcome: BatchOutcome, record: SourceRecord, reason: str) -> None:
        outcome.reject(reason)
        outcome.outbox.append(self._dead_letter(record, reason))

    def _dead_letter(self, record: SourceRecord, reason: str) -> OutgoingMessage:
        value = record.value or b""
        headers = [
            ("error", reason.encode()),
            ("source.topic", record.topic.encode()),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
        ]
        if len(value) > MAX_DEAD_LETTER_BYTES:  # keep the DLQ producible whatever came in
            headers.append(("truncated.from", str(len(value)).encode()))
            value = value[:MAX_DEAD_LETTER_BYTES]
        return OutgoingMessage(self.dlq_topic, record.key, value, tuple(headers))
