"""Where a vector gets written: one micro-batch of consumed records in, entity state updated,
embeddings recomputed with the active encoder version, everything committed atomically.

The batch is coalesced: an entity touched by many events in the batch is encoded once, and
all users (then all items) of the batch go through the encoder in one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from models.encoder import Encoder
from models.features import ItemState, UserState
from store.vector_store import StoreWriter, VersionedVectorStore
from stream.events import Interaction, Rejection, parse_event
from stream.outbox import OutgoingMessage, encode_outbox

__all__ = ["MAX_DEAD_LETTER_BYTES", "BatchOutcome", "ConsumedRecord", "EmbeddingRefresher"]

#: Dead letters carry the original bytes up to this size (and a ``truncated.from`` header
#: beyond it), so one oversized record can never make the dead-letter topic refuse a batch.
MAX_DEAD_LETTER_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """The parts of a Kafka record the refresher needs."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass
class BatchOutcome:
    consumed: int = 0
    applied: int = 0
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

    def process(self, records: Sequence[ConsumedRecord]) -> BatchOutcome:
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
            parsed = parse_event(record.value, record.timestamp_ms, now_ms, self.max_future_skew_ms)
            if isinstance(parsed, Rejection):
                outcome.rejected[parsed.reason] = outcome.rejected.get(parsed.reason, 0) + 1
                outcome.outbox.append(self._dead_letter(record, parsed.reason))
            else:
                events.append(parsed)
        outcome.applied = len(events)
        writer = self.store.writer()
        if events:
            users, items = self._apply(events)
            written_at = self.clock_ms()
            self._encode_and_put(writer, users, items, written_at, outcome)
        for (topic, partition), offset in next_offsets.items():
            writer.set_offset(topic, partition, offset)
        if outcome.outbox:
            writer.set_outbox(encode_outbox(outcome.outbox))
        writer.commit()
        return outcome

    def _apply(
        self, events: list[Interaction]
    ) -> tuple[dict[str, tuple[UserState, int]], dict[str, tuple[ItemState, int]]]:
        """Load, update and return the touched states with their latest event time."""
        user_ids = list(dict.fromkeys(event.user_id for event in events))
        item_ids = list(dict.fromkeys(event.item_id for event in events))
        users = {
            user_id: UserState(window=self.user_window)
            if raw is None
            else UserState.from_bytes(raw, window=self.user_window)
            for user_id, raw in zip(user_ids, self.store.get_states("user", user_ids), strict=True)
        }
        items = {
            item_id: ItemState() if raw is None else ItemState.from_bytes(raw)
            for item_id, raw in zip(item_ids, self.store.get_states("item", item_ids), strict=True)
        }
        user_latest: dict[str, int] = {}
        item_latest: dict[str, int] = {}
        item_events: dict[str, list[tuple[int, int]]] = {item_id: [] for item_id in item_ids}
        for event in events:
            users[event.user_id].add(event.item_id, event.type_code, event.value, event.ts_ms)
            item_events[event.item_id].append((event.type_code, event.ts_ms))
            user_latest[event.user_id] = max(user_latest.get(event.user_id, 0), event.ts_ms)
        for item_id, applied in item_events.items():
            items[item_id].add_many(applied)
            item_latest[item_id] = max(ts for _, ts in applied)
        return (
            {uid: (state, user_latest[uid]) for uid, state in users.items()},
            {iid: (state, item_latest[iid]) for iid, state in items.items()},
        )

    def _encode_and_put(
        self,
        writer: StoreWriter,
        users: dict[str, tuple[UserState, int]],
        items: dict[str, tuple[ItemState, int]],
        written_at: int,
        outcome: BatchOutcome,
    ) -> None:
        states: dict[str, dict[str, tuple[UserState | ItemState, int]]] = {
            "user": {**users},
            "item": {**items},
        }
        inputs = {
            "user": [state.to_input(uid) for uid, (state, _) in users.items()],
            "item": [state.to_input(iid) for iid, (state, _) in items.items()],
        }
        for kind, entities in states.items():
            for entity_id, (state, _) in entities.items():
                writer.put_state(kind, entity_id, state.to_bytes())
        encoders = list(self.encoders())
        for encoder in encoders:
            version = encoder.version
            encoded = {
                "user": encoder.encode_users(inputs["user"]),  # type: ignore[arg-type]
                "item": encoder.encode_items(inputs["item"]),  # type: ignore[arg-type]
            }
            for kind, entities in states.items():
                writer.put_vectors(kind, list(entities), version, encoded[kind], written_at)
                outcome.written[(kind, version)] = len(entities)
                for entity_id, (_, event_ts) in entities.items():
                    if encoder is encoders[0]:  # freshness is measured on the serving version
                        outcome.lags_seconds.append(max(0.0, (written_at - event_ts) / 1000.0))
                    update = {
                        "kind": kind,
                        "id": entity_id,
                        "version": version,
                        "ts": written_at,
                        "event_ts": event_ts,
                    }
                    outcome.outbox.append(
                        OutgoingMessage(
                            self.updates_topic, f"{kind}:{entity_id}".encode(), orjson.dumps(update)
                        )
                    )

    def _dead_letter(self, record: ConsumedRecord, reason: str) -> OutgoingMessage:
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
