"""Backfill: give a staged version a vector for every known entity.

Two fills, each with a cursor per (version, kind) (the last id done) written in the same
RocksDB batch as the vectors, so a worker killed mid-fill resumes where it stopped:

- :class:`ForwardFiller` (first, when the version has a usable forward transform): every
  entity without a vector of the version gets its serving vector carried forward,
  ``F_V(serving vector)``, marked ``forward`` in its record. It reads records only and costs
  one matrix product per chunk, so it is fast; a promote can go ahead once it is done.
- :class:`Backfiller`: re-encodes entities with the version, from their stored state. With a
  forward fill before it, it runs in passes, most recently active entities first
  (:data:`RECENCY_TIERS`), and replaces forward entries as it goes; it continues after a
  promote until every entity is native.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.encoder import Encoder
from store.keys import entity_key
from store.record import COMPACT_RECORD_FORMAT
from store.record_scan import entry_spans, locate_entry, newest_and_entry, span_vector
from store.vector_store import VersionedVectorStore
from store.writer import StoreWriter
from stream.ingest.refresher import refresh_entities, write_entities

__all__ = ["RECENCY_TIERS", "BackfillProgress", "Backfiller", "ForwardFiller", "fill_missing"]

_DONE = b"\x00done"
_COMPACT = bytes([COMPACT_RECORD_FORMAT])
_U64 = struct.Struct("<Q")
_TWO_U64 = struct.Struct("<QQ")
KINDS = ("user", "item")
#: The native backfill's passes after a forward fill, most recently active entities first:
#: a pass encodes the entities whose newest vector was written within that many seconds
#: (``None``: all of them), skipping those whose vector of the version is already native and
#: as fresh as their newest entry (written by the dual write, or by an earlier pass).
RECENCY_TIERS: tuple[int | None, ...] = (3_600, 86_400, 7 * 86_400, None)
#: A backfill step passes over at most this many times the entities it may encode (a pass
#: that finds few entities to encode moves on quickly; the rate bounds the encoding).
SCAN_FACTOR = 8


@dataclass
class BackfillProgress:
    done: int
    total: int
    complete: bool


class _Progress:
    """A fill's progress in the store's meta keys, per kind: a cursor (the last id done, or
    done), a count, and the names of any other keys it keeps."""

    def __init__(self, store: VersionedVectorStore, name: str, version: int) -> None:
        self.store = store
        self.name = name
        self.version = version

    def _cursor_name(self, kind: str) -> str:
        return f"{self.name}:{self.version}:{kind}"

    def _done_name(self, kind: str) -> str:
        return f"{self.name}ed:{self.version}:{kind}"

    def _other_names(self, kind: str) -> list[str]:
        return []

    def forget(self) -> None:
        """Remove this fill's progress from the store (to run it again from the start)."""
        writer = self.store.writer()
        for kind in KINDS:
            for name in (self._cursor_name(kind), self._done_name(kind), *self._other_names(kind)):
                writer.delete_meta(name)
        writer.commit()

    def _finished(self, kind: str) -> bool:
        return self.store.get_meta(self._cursor_name(kind)) == _DONE


class Backfiller(_Progress):
    """Backfills one staged version; call :meth:`step` repeatedly until :attr:`complete`."""

    def __init__(
        self,
        store: VersionedVectorStore,
        encoder: Encoder,
        user_window: int = 50,
        name: str = "backfill",
        tiers: tuple[int | None, ...] = (None,),
    ) -> None:
        """``name`` prefixes the progress kept in the store (``meta:<name>:<version>:<kind>``);
        ``tiers``: the passes (:data:`RECENCY_TIERS`; the default is one pass over all)."""
        if not tiers or tiers[-1] is not None:
            raise ValueError("the last pass of a backfill covers every entity (None)")
        super().__init__(store, name, encoder.version)
        self.encoder = encoder
        self.user_window = user_window
        self.tiers = tiers
        self.totals = {kind: store.count_states(kind) for kind in KINDS}
        self.encoded = 0  # entities this object encoded (the store keeps the progress)

    def _pass_name(self, kind: str) -> str:
        return f"{self.name}-pass:{self.version}:{kind}"

    def _other_names(self, kind: str) -> list[str]:
        return [self._pass_name(kind)]

    @property
    def started(self) -> bool:
        """Whether this backfill has progress in the store (begun, finished or not)."""
        return any(self.store.get_meta(self._cursor_name(kind)) is not None for kind in KINDS)

    def _counts(self, kind: str) -> tuple[int, int]:
        """(encoded in the passes before the last, entities passed in the last pass)."""
        raw = self.store.get_meta(self._done_name(kind))
        if not raw:
            return 0, 0
        if len(raw) == _U64.size:  # written before passes: one count, of the one pass
            return 0, _U64.unpack(raw)[0]
        early, last = _TWO_U64.unpack(raw)
        return early, last

    def _pass(self, kind: str, cursor: bytes | None) -> int:
        """Which pass a kind is in (a cursor kept without a pass: the last one)."""
        raw = self.store.get_meta(self._pass_name(kind))
        if raw is None:
            return 0 if cursor is None else len(self.tiers) - 1
        return min(raw[0], len(self.tiers) - 1)

    def progress(self) -> dict[str, BackfillProgress]:
        result = {}
        for kind in KINDS:
            done = max(self._counts(kind))
            complete = self._finished(kind)
            total = max(self.totals[kind], done)
            result[kind] = BackfillProgress(total if complete else min(done, total), total, complete)
        return result

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.progress().values())

    def step(self, limit: int) -> int:
        """Encode up to ``limit`` more entities (users first, then items) that the current
        pass covers, passing over at most ``SCAN_FACTOR`` times as many; returns how many
        were passed over."""
        for kind in KINDS:
            cursor = self.store.get_meta(self._cursor_name(kind))
            if cursor == _DONE:
                continue
            tier = self._pass(kind, cursor)
            after = None if cursor is None else cursor.decode("utf-8")
            states = iter(self.store.iter_states(kind, after=after))
            passed, last_id, ended = 0, after, False
            picked: list[tuple[str, bytes, int | None]] = []
            records: dict[bytes, bytes] = {}
            while len(picked) < limit and passed < SCAN_FACTOR * limit:
                chunk = list(itertools.islice(states, limit))
                if chunk:
                    found, held = self._pick(kind, chunk, self.tiers[tier])
                    picked.extend(found)
                    records.update(held)
                    passed, last_id = passed + len(chunk), chunk[-1][0]
                if len(chunk) < limit:
                    ended = True
                    break
            writer = self.store.writer()
            early, last = self._counts(kind)
            if picked:
                self._encode(writer, kind, picked, records)
            if tier < len(self.tiers) - 1:
                early += len(picked)
            else:
                last += passed
            writer.put_meta(self._done_name(kind), _TWO_U64.pack(early, last))
            if ended and tier < len(self.tiers) - 1:  # the next pass starts over
                writer.put_meta(self._pass_name(kind), bytes([tier + 1]))
                writer.delete_meta(self._cursor_name(kind))
            elif ended:
                writer.put_meta(self._cursor_name(kind), _DONE)
            else:
                assert last_id is not None
                writer.put_meta(self._pass_name(kind), bytes([tier]))
                writer.put_meta(self._cursor_name(kind), last_id.encode("utf-8"))
            writer.commit()
            return passed
        return 0

    def _pick(
        self, kind: str, chunk: list[tuple[str, bytes]], horizon_s: int | None
    ) -> tuple[list[tuple[str, bytes, int | None]], dict[bytes, bytes]]:
        """The entities of ``chunk`` (adjacent ids) this pass encodes, as (id, state, time of
        the newest vector), and the chunk's records."""
        # The chunk is a run of adjacent keys: one range read finds their records.
        records = self.store.scan_raw_records(kind, chunk[0][0], chunk[-1][0])
        now = int(time.time() * 1000)
        picked = []
        version = self.encoder.version
        for entity_id, state in chunk:
            raw = records.get(entity_key(kind, entity_id))
            latest = None
            if raw is not None:
                latest, own = newest_and_entry(raw, version)  # one walk of the record
                if own is not None and not own.forward and own.updated_at_ms >= latest:
                    continue  # native and as fresh as the entity's newest vector
            if horizon_s is not None and (latest is None or latest < now - horizon_s * 1000):
                continue  # not active recently enough for this pass
            picked.append((entity_id, state, latest))
        return picked, records

    def _encode(
        self,
        writer: StoreWriter,
        kind: str,
        picked: list[tuple[str, bytes, int | None]],
        records: dict[bytes, bytes],
    ) -> None:
        ids = [entity_id for entity_id, _, _ in picked]
        states = {entity_id: state for entity_id, state, _ in picked}
        refreshed = refresh_entities(kind, None, states, [self.encoder], self.user_window, ids)
        # Vectors of a state are as fresh as the state: they take the time of the entity's
        # newest entry, so a read never takes them for fresher than its serving entry (or
        # the serving entry for fresher than them).
        now = int(time.time() * 1000)
        stamps = np.array([now if latest is None else latest for _, _, latest in picked], dtype=np.int64)
        write_entities(writer, kind, ids, refreshed.vectors, stamps, stored_records=records)
        self.encoded += len(ids)


class ForwardFiller(_Progress):
    """Gives ``version`` a forward vector, ``transform(serving vector)``, for every entity
    whose record holds a vector of ``source`` (the serving version, the version's parent) and
    none of ``version``; call :meth:`step` until :attr:`complete`. An entity that has a
    vector of ``version`` (dual-written, or backfilled) is left alone. A forward vector takes
    the time of the serving vector it came from."""

    def __init__(
        self,
        store: VersionedVectorStore,
        version: int,
        source: int,
        transform: Callable[[np.ndarray], np.ndarray],
        source_dim: int,
        name: str = "forward",
    ) -> None:
        super().__init__(store, name, version)
        self.source = source
        self.transform = transform
        self.source_dim = source_dim
        self.totals = {kind: store.count_states(kind) for kind in KINDS}

    def progress(self) -> BackfillProgress:
        """Both kinds together: records passed over, of the entities known at the start."""
        done = total = 0
        complete = True
        for kind in KINDS:
            raw = self.store.get_meta(self._done_name(kind))
            passed = _U64.unpack(raw)[0] if raw else 0
            finished = self._finished(kind)
            kind_total = max(self.totals[kind], passed)
            done += kind_total if finished else passed
            total += kind_total
            complete = complete and finished
        return BackfillProgress(done, total, complete)

    @property
    def complete(self) -> bool:
        return all(self._finished(kind) for kind in KINDS)

    def step(self, limit: int) -> int:
        """Pass over up to ``limit`` more records (users first, then items); returns how many."""
        for kind in KINDS:
            cursor = self.store.get_meta(self._cursor_name(kind))
            if cursor == _DONE:
                continue
            after = None if cursor is None else cursor.decode("utf-8")
            chunk: list[tuple[str, bytes]] = []
            for entity_id, raw in self.store.iter_raw_records(kind, after=after):
                chunk.append((entity_id, raw))
                if len(chunk) >= limit:
                    break
            writer = self.store.writer()
            ids: list[str] = []
            rows: list[np.ndarray] = []
            stamps: list[int] = []
            # Most records' newest entry is the source's (a version above it would be first):
            # then the version is absent and the source's span is where the first entry is.
            one_byte = self.source < 0x80 and self.version > self.source
            newest = _COMPACT + bytes([self.source]) if one_byte else None
            for entity_id, raw in chunk:
                if newest is not None and raw[:2] == newest:
                    span = locate_entry(raw, self.source)
                else:
                    spans = entry_spans(raw)  # one walk for both versions
                    if self.version in spans:
                        continue
                    span = spans.get(self.source)
                if span is None or span.dim != self.source_dim:
                    continue
                ids.append(entity_id)
                rows.append(span_vector(raw, span))
                stamps.append(span.updated_at_ms)
            if ids:
                carried = self.transform(np.stack(rows).astype(np.float32))
                records = {entity_key(kind, entity_id): raw for entity_id, raw in chunk}
                writer.put_vectors(
                    kind,
                    ids,
                    self.version,
                    carried,
                    np.asarray(stamps, dtype=np.int64),
                    stored_records=records,
                    forward=True,
                )
            if chunk:
                raw_done = self.store.get_meta(self._done_name(kind))
                passed = (_U64.unpack(raw_done)[0] if raw_done else 0) + len(chunk)
                writer.put_meta(self._done_name(kind), _U64.pack(passed))
            finished = len(chunk) < limit
            writer.put_meta(self._cursor_name(kind), _DONE if finished else chunk[-1][0].encode("utf-8"))
            writer.commit()
            return len(chunk)
        return 0


def fill_missing(
    store: VersionedVectorStore, encoder: Encoder, user_window: int = 50, chunk: int = 2_000
) -> int:
    """Encode at ``encoder``'s version the entities of the store that lack a native vector of
    that version as fresh as their newest one, when some lack it (a scale-out worker that
    was down while that version was rolled out); returns how many were encoded (0 when none
    lacked it)."""
    counts = store.version_counts()
    if all(counts.get(kind, {}).get(encoder.version, 0) >= store.count_states(kind) for kind in KINDS):
        return 0
    filler = Backfiller(store, encoder, user_window, name="fill")
    filler.forget()
    while not filler.complete:
        filler.step(chunk)
    filler.forget()
    return filler.encoded
