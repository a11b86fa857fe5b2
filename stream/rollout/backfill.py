"""Backfill: re-encode every known entity with a staged version, from its stored state.

Progress is a cursor per (version, kind), the last id done, written in the same RocksDB
batch as the vectors, so a worker killed mid-backfill resumes where it stopped.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import numpy as np

from models.encoder import Encoder
from store.keys import entity_key
from store.record_scan import latest_update_ms
from store.vector_store import VersionedVectorStore
from stream.ingest.refresher import refresh_entities, write_entities

__all__ = ["BackfillProgress", "Backfiller", "fill_missing"]

_DONE = b"\x00done"
_U64 = struct.Struct("<Q")
KINDS = ("user", "item")


@dataclass
class BackfillProgress:
    done: int
    total: int
    complete: bool


class Backfiller:
    """Backfills one staged version; call :meth:`step` repeatedly until :attr:`complete`."""

    def __init__(
        self, store: VersionedVectorStore, encoder: Encoder, user_window: int = 50, name: str = "backfill"
    ) -> None:
        """``name`` prefixes the progress kept in the store (``meta:<name>:<version>:<kind>``)."""
        self.store = store
        self.encoder = encoder
        self.user_window = user_window
        self.name = name
        self.totals = {kind: store.count_states(kind) for kind in KINDS}

    def _cursor_name(self, kind: str) -> str:
        return f"{self.name}:{self.encoder.version}:{kind}"

    def _done_name(self, kind: str) -> str:
        return f"{self.name}ed:{self.encoder.version}:{kind}"

    def forget(self) -> None:
        """Remove this backfill's progress from the store (to run it again from the start)."""
        writer = self.store.writer()
        for kind in KINDS:
            writer.delete_meta(self._cursor_name(kind))
            writer.delete_meta(self._done_name(kind))
        writer.commit()

    def progress(self) -> dict[str, BackfillProgress]:
        result = {}
        for kind in KINDS:
            raw = self.store.get_meta(self._done_name(kind))
            done = _U64.unpack(raw)[0] if raw else 0
            complete = self.store.get_meta(self._cursor_name(kind)) == _DONE
            total = max(self.totals[kind], done)
            result[kind] = BackfillProgress(total if complete else done, total, complete)
        return result

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.progress().values())

    def step(self, limit: int) -> int:
        """Encode up to ``limit`` more entities (users first, then items); returns how many."""
        for kind in KINDS:
            cursor = self.store.get_meta(self._cursor_name(kind))
            if cursor == _DONE:
                continue
            after = None if cursor is None else cursor.decode("utf-8")
            chunk = []
            for entity_id, raw in self.store.iter_states(kind, after=after):
                chunk.append((entity_id, raw))
                if len(chunk) >= limit:
                    break
            writer = self.store.writer()
            if chunk:
                ids = [entity_id for entity_id, _ in chunk]
                refreshed = refresh_entities(kind, None, dict(chunk), [self.encoder], self.user_window, ids)
                # The chunk is a run of adjacent keys: one range read finds their records.
                records = self.store.scan_raw_records(kind, ids[0], ids[-1])
                # Vectors of a state are as fresh as the state: they take the time of the
                # entity's newest entry, so a read never takes them for fresher than its
                # serving entry (or the serving entry for fresher than them).
                now = int(time.time() * 1000)
                raws = [records.get(entity_key(kind, entity_id)) for entity_id in ids]
                stamps = np.array(
                    [now if raw is None else latest_update_ms(raw) for raw in raws], dtype=np.int64
                )
                write_entities(writer, kind, ids, refreshed.vectors, stamps, stored_records=records)
                raw_done = self.store.get_meta(self._done_name(kind))
                done = (_U64.unpack(raw_done)[0] if raw_done else 0) + len(chunk)
                writer.put_meta(self._done_name(kind), _U64.pack(done))
            finished = len(chunk) < limit
            writer.put_meta(self._cursor_name(kind), _DONE if finished else chunk[-1][0].encode("utf-8"))
            writer.commit()
            if chunk or finished:
                return len(chunk)
        return 0


def fill_missing(
    store: VersionedVectorStore, encoder: Encoder, user_window: int = 50, chunk: int = 2_000
) -> int:
    """Encode at ``encoder``'s version every entity of the store when some lack that version
    (a scale-out worker that was down while that version was rolled out); returns how many
    entities were encoded (0 when none lacked it)."""
    counts = store.version_counts()
    if all(counts.get(kind, {}).get(encoder.version, 0) >= store.count_states(kind) for kind in KINDS):
        return 0
    filler = Backfiller(store, encoder, user_window, name="fill")
    filler.forget()
    encoded = 0
    while not filler.complete:
        encoded += filler.step(chunk)
    filler.forget()
    return encoded
