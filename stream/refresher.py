"""Where a vector gets written: one micro-batch of consumed records in, entity state updated,
embeddings recomputed with the active encoder version, everything committed atomically.

The batch is coalesced: an entity touched by many events in the batch is encoded once, and
all users (then all items) of the batch go through the encoder in one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import orjson

from models.encoder import Encoder
from models.state_batch import EventColumns, apply_item_events, apply_user_events
from store.vector_store import StoreWriter, VersionedVectorStore
from stream.events import Interaction, Rejection, parse_event
from stream.outbox import OutgoingMessage, encode_outbox

__all__ = ["MAX_DEAD_LETTER_BYTES", "BatchOutcome", "ConsumedRecord", "EmbeddingRefresher", "SourceRecord"]

#: Dead letters carry the original bytes up to this size (and a ``truncated.from`` header
#: beyond it), so one oversized record can never make the dead-letter topic refuse a batch.
MAX_DEAD_LETTER_BYTES = 512 * 1024
_NAN = float("nan")


def _distinct(keys: list[str]) -> tuple[list[str], np.ndarray]:
    """The distinct keys in first-seen order, and each key's row among them."""
    index = {key: row for row, key in enumerate(dict.fromkeys(keys))}
    return list(index), np.fromiter(map(index.__getitem__, keys), np.int64, len(keys))


def _latest_per_row(rows: int, row_of: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    latest = np.zeros(rows, dtype=np.int64)
    np.maximum.at(latest, row_of, timestamps)
    return latest


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
    written: dict[tuple[str, int], int] = field(default_factory=dict)
    lags_seconds: list[float] = field(default_factory=list)
    outbox: list[OutgoingMessage] = field(default_factory=list)


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
        self.clock_ms = clock_ms

    def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        """Apply ``records`` (in partition order) and commit state, vectors, offsets, outbox."""
        outcome = BatchOutcome(consumed=len(records))
        now_ms = self.clock_ms()
        next_offsets: dict[tuple[str, int], int] = {}
        stored: dict[tuple[str, int], int | None] = {}
        events: list[Interaction] = []
        for record in records:
            source = (record.topic, record.partition)
            if source not in stored:
                stored[source] = self.store.get_offset(*source)
            floor = stored[source]
            if floor is not None and record.offset < floor:
                outcome.duplicates += 1
                continue
            next_offsets[source] = record.offset + 1
            parsed = parse_event(record.value, record.timestamp, now_ms, self.max_future_skew_ms)
            if isinstance(parsed, Rejection):
                outcome.rejected[parsed.reason] = outcome.rejected.get(parsed.reason, 0) + 1
                outcome.outbox.append(self._dead_letter(record, parsed.reason))
            else:
                events.append(parsed)
        outcome.applied = outcome.item_events = len(events)
        writer = self.store.writer()
        if events:
            self._apply_and_encode(writer, events, outcome)
        for (topic, partition), offset in next_offsets.items():
            writer.set_offset(topic, partition, offset)
        if outcome.outbox:
            writer.set_outbox(encode_outbox(outcome.outbox))
        writer.commit()
        return outcome

    def _apply_and_encode(
        self, writer: StoreWriter, events: list[Interaction], outcome: BatchOutcome
    ) -> None:
        """Update the touched users and items as whole columns, encode each kind in one call
        per version, and stage state, vectors and update messages in ``writer``."""
        count = len(events)
        columns = EventColumns(
            [event.user_id for event in events],
            [event.item_id for event in events],
            np.fromiter((event.type_code for event in events), np.uint8, count),
            np.fromiter(
                (_NAN if event.value is None else event.value for event in events), np.float32, count
            ),
            np.fromiter((event.ts_ms for event in events), np.int64, count),
        )
        user_ids, user_rows = _distinct(columns.user_ids)
        item_ids, item_rows = _distinct(columns.item_ids)
        user_states, histories = apply_user_events(
            user_ids, self.store.get_states("user", user_ids), self.user_window, columns, user_rows
        )
        item_states, counts = apply_item_events(
            item_ids, self.store.get_states("item", item_ids), columns, item_rows
        )
        for kind, ids, states in (("user", user_ids, user_states), ("item", item_ids, item_states)):
            for entity_id, state in zip(ids, states, strict=True):
                writer.put_state(kind, entity_id, state)
        written_at = self.clock_ms()
        latest = {
            "user": _latest_per_row(len(user_ids), user_rows, columns.timestamps_ms),
            "item": _latest_per_row(len(item_ids), item_rows, columns.timestamps_ms),
        }
        ids_of = {"user": user_ids, "item": item_ids}
        encoders = list(self.encoders())
        for encoder in encoders:
            version = encoder.version
            encoded = {"user": encoder.encode_users(histories), "item": encoder.encode_items(counts)}
            for kind, ids in ids_of.items():
                writer.put_vectors(kind, ids, version, encoded[kind], written_at)
                outcome.written[(kind, version)] = len(ids)
                if encoder is encoders[0]:  # freshness is measured on the serving version
                    lags = np.maximum(0.0, (written_at - latest[kind]) / 1000.0)
                    outcome.lags_seconds.extend(lags.tolist())
                outcome.outbox.extend(self._updates(kind, ids, version, written_at, latest[kind]))

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
