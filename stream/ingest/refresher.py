"""Where a vector gets written: the one write path.

A micro-batch of consumed records goes in; the touched entities' state is updated, their
embeddings recomputed with the refresh versions, and state, vectors, source offsets and the
outgoing messages are committed in one RocksDB write batch. The batch is coalesced: an entity
touched by many events is encoded once, and all users (then all items) of the batch go through
the encoder in one call.

Every path that writes entity vectors goes through :func:`write_entities`: this refresher,
the scale-out refresher (which prepares the same batches and publishes them before
committing), the scale-out replica (batches other workers wrote) and the backfill (stored
states re-encoded with a staged version); :func:`refresh_entities` is the one computation of
new states and vectors they share.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from models.encoder import Encoder
from models.state_batch import EventColumns, apply_item_events, apply_user_events, event_columns
from store.vector_store import VersionedVectorStore
from store.writer import StoreWriter
from stream.ingest.events import MAX_EVENT_BYTES, Interaction, Rejection, parse_event
from stream.ingest.outbox import OutgoingMessage, encode_outbox
from stream.ingest.poison import POISON_CRASHED, CrashGuard, isolate
from stream.ingest.records import BatchOutcome, ConsumedRecord, SourceRecord

__all__ = [
    "KEY_NOT_USER_ID",
    "UPDATE_IDS_PER_MESSAGE",
    "BatchOutcome",
    "ConsumedRecord",
    "Decoded",
    "EmbeddingRefresher",
    "Refreshed",
    "SourceRecord",
    "distinct",
    "refresh_entities",
    "write_entities",
]

#: Dead letters carry the original bytes up to this size (and a ``truncated.from`` header
#: beyond it), so one oversized record can never make the dead-letter topic refuse a batch.
MAX_DEAD_LETTER_BYTES = 512 * 1024
#: Dead-letter reason of an event whose Kafka key is not its user_id, where that matters (with
#: several workers a user's events must all reach the partition that owns the user).
KEY_NOT_USER_ID = "key is not the user_id"
#: Ids in one message of the batch form of ``embeddings.updates`` (about 40 KB of JSON).
UPDATE_IDS_PER_MESSAGE = 2_000
#: Bytes JSON escapes inside a string (orjson writes any other UTF-8 byte as it is).
_JSON_ESCAPED = re.compile(rb'[\x00-\x1f"\\]')


def write_entities(
    writer: StoreWriter,
    kind: str,
    ids: Sequence[str],
    vectors: Mapping[int, np.ndarray],
    written_at_ms: int | np.ndarray,
    states: Sequence[bytes] | None = None,
    stored_records: Mapping[bytes, bytes] | None = None,
) -> None:
    """Stage the vectors of ``ids`` per version (and their new ``states``) in ``writer``,
    written at ``written_at_ms`` (one time, or one per id).

    The one place entity vectors are written (``stored_records``: the records of every id,
    read in one range scan, for a writer that has them; see ``StoreWriter.put_vectors``).
    """
    if states is not None:
        for entity_id, state in zip(ids, states, strict=True):
            writer.put_state(kind, entity_id, state)
    if not ids:
        return
    for version, matrix in vectors.items():
        writer.put_vectors(kind, ids, version, matrix, written_at_ms, stored_records)


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
    """One kind's entities: new states and vectors, not yet written."""

    kind: str
    ids: list[str]
    rows: np.ndarray  # int64 [events]: each event's row among ``ids``
    states: list[bytes]
    vectors: dict[int, np.ndarray]  # per version, in the order of the encoders
    latest_ms: np.ndarray  # int64 [ids]: the latest event time of each entity


def refresh_entities(
    kind: str,
    columns: EventColumns | None,
    stored: Mapping[str, bytes | None],
    encoders: Sequence[Encoder],
    user_window: int,
    ids: Sequence[str] | None = None,
) -> Refreshed:
    """Apply ``columns`` to the ``stored`` states of the entities of ``kind`` they touch and
    encode each entity once per version. Without events, the states of ``ids`` are encoded
    as they are (a backfill). Pure: reads and writes nothing."""
    if columns is not None:
        ids, rows = distinct(columns.user_ids if kind == "user" else columns.item_ids)
    else:
        ids, rows = list(ids or []), np.zeros(0, dtype=np.int64)
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
    if columns is not None:
        latest = _latest_per_row(len(ids), rows, columns.timestamps_ms)
    else:
        latest = np.zeros(len(ids), dtype=np.int64)
    return Refreshed(kind, ids, rows, states, vectors, latest)


@dataclass
class Decoded:
    """A batch's records read: the valid events and the record each came from, and per
    source partition the stored offset it continued (``starts``) and the next one (``ends``)."""

    events: list[Interaction] = field(default_factory=list)
    sources: list[SourceRecord] = field(default_factory=list)
    starts: dict[tuple[str, int], int | None] = field(default_factory=dict)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)


class EmbeddingRefresher:
    """Applies batches to a store with the refresh versions (one fixed version, or the
    serving and a staged one during a rollout)."""

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
        updates_format: str = "per-vector",
    ) -> None:
        self.store = store
        # One fixed encoder, or a provider of the versions to write (serving first, then a
        # staged version during a rollout: dual write).
        self.encoders: Callable[[], Sequence[Encoder]] = (
            encoders if callable(encoders) else (lambda: [encoders])  # type: ignore[list-item]
        )
        self.updates_topic = updates_topic
        #: "per-vector": one update message per written vector; "batch": one per kind and
        #: version of a write batch (:data:`UPDATE_IDS_PER_MESSAGE` ids at most).
        self.updates = self._batch_updates if updates_format == "batch" else self._updates
        self.dlq_topic = dlq_topic
        self.user_window = user_window
        self.max_future_skew_ms = max_future_skew_ms
        self.max_event_bytes = max_event_bytes
        self.clock_ms = clock_ms
        self.guard = CrashGuard(store)

    # ----- a batch of one worker ---------------------------------------------------------------

    def plan(self, records: Sequence[SourceRecord]) -> list[list[SourceRecord]]:
        """The batches to apply ``records`` in: one, unless the last run died applying some
        of them (see :class:`stream.ingest.poison.CrashGuard`)."""
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
        decoded = self.decode(records, outcome, quarantine, outcome.outbox)
        if decoded.events:
            refreshed, kept = self.refresh(
                ("user", "item"),
                event_columns(decoded.events),
                lambda row, reason: self.reject(outcome, outcome.outbox, decoded.sources[row], reason),
            )
            outcome.applied = outcome.item_events = len(kept)
            for kind_refreshed in refreshed:
                self.stage(writer, kind_refreshed, outcome, outcome.outbox)
        for (topic, partition), offset in decoded.ends.items():
            writer.set_offset(topic, partition, offset)
        return outcome

    # ----- the steps, shared with the scale-out refresher ------------------------------------

    def decode(
        self,
        records: Sequence[SourceRecord],
        outcome: BatchOutcome,
        quarantine: set[tuple[str, int, int]],
        dead_letters: list[OutgoingMessage],
        key_is_user_id: bool = False,
    ) -> Decoded:
        """Parse ``records``: skip those below their partition's stored offset (counted as
        duplicates), dead-letter quarantined and invalid ones (with ``key_is_user_id``, also
        those keyed by something else than their user), keep the valid events."""
        decoded = Decoded()
        now_ms = self.clock_ms()
        for record in records:
            source = (record.topic, record.partition)
            if source not in decoded.starts:
                decoded.starts[source] = self.store.get_offset(*source)
            floor = decoded.starts[source]
            if floor is not None and record.offset < floor:
                outcome.duplicates += 1
                continue
            decoded.ends[source] = record.offset + 1
            if quarantine and (record.topic, record.partition, record.offset) in quarantine:
                outcome.quarantined += 1
                self.reject(outcome, dead_letters, record, POISON_CRASHED)
                continue
            parsed = parse_event(
                record.value, record.timestamp, now_ms, self.max_future_skew_ms, self.max_event_bytes
            )
            if key_is_user_id and not isinstance(parsed, Rejection) and record.key != parsed.user_id.encode():
                parsed = Rejection(KEY_NOT_USER_ID)
            if isinstance(parsed, Rejection):
                self.reject(outcome, dead_letters, record, parsed.reason)
            else:
                decoded.events.append(parsed)
                decoded.sources.append(record)
        return decoded

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
        messages: list[OutgoingMessage],
    ) -> int:
        """Write ``refreshed`` into ``writer``, count it in ``outcome``, and queue its update
        messages in ``messages``; returns the time written."""
        written_at = self.clock_ms()
        write_entities(writer, refreshed.kind, refreshed.ids, refreshed.vectors, written_at, refreshed.states)
        for position, version in enumerate(refreshed.vectors):
            outcome.written[(refreshed.kind, version)] = len(refreshed.ids)
            if position == 0:  # freshness is measured on the serving version
                lags = np.maximum(0.0, (written_at - refreshed.latest_ms) / 1000.0)
                outcome.lags_seconds.extend(lags.tolist())
            messages.extend(
                self.updates(refreshed.kind, refreshed.ids, version, written_at, refreshed.latest_ms)
            )
        return written_at

    def _updates(
        self, kind: str, ids: list[str], version: int, written_at: int, event_ts: np.ndarray
    ) -> list[OutgoingMessage]:
        """One ``embeddings.updates`` message per entity written."""
        topic, prefix = self.updates_topic, f"{kind}:".encode()
        head = b'{"kind":"' + kind.encode() + b'","id":'
        tail = b',"version":%d,"ts":%d,"event_ts":' % (version, written_at)
        raw = [entity_id.encode() for entity_id in ids]
        if _JSON_ESCAPED.search(b"".join(raw)) is None:  # every id is its own JSON string body
            quoted = [b'"%s"' % entity_id for entity_id in raw]
        else:
            quoted = list(map(orjson.dumps, ids))
        return [
            OutgoingMessage(topic, prefix + entity_id, b"%s%s%s%d}" % (head, string, tail, ts))
            for entity_id, string, ts in zip(raw, quoted, event_ts.tolist(), strict=True)
        ]

    def _batch_updates(
        self, kind: str, ids: list[str], version: int, written_at: int, event_ts: np.ndarray
    ) -> list[OutgoingMessage]:
        """A few ``embeddings.updates`` messages for a whole write batch: key ``kind:version``,
        value ``{"kind", "version", "ts", "ids": [...], "event_ts": [...]}``."""
        key = f"{kind}:{version}".encode()
        stamps = event_ts.tolist()
        return [
            OutgoingMessage(
                self.updates_topic,
                key,
                orjson.dumps(
                    {
                        "kind": kind,
                        "version": version,
                        "ts": written_at,
                        "ids": ids[start : start + UPDATE_IDS_PER_MESSAGE],
                        "event_ts": stamps[start : start + UPDATE_IDS_PER_MESSAGE],
                    }
                ),
            )
            for start in range(0, len(ids), UPDATE_IDS_PER_MESSAGE)
        ]

    def reject(
        self, outcome: BatchOutcome, dead_letters: list[OutgoingMessage], record: SourceRecord, reason: str
    ) -> None:
        """Count ``record`` as rejected for ``reason`` and queue its dead letter."""
        outcome.reject(reason)
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
        dead_letters.append(OutgoingMessage(self.dlq_topic, record.key, value, tuple(headers)))
