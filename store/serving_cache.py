"""An in-memory copy of the serving version's vectors, so hot reads skip RocksDB.

One float32 matrix per kind with an id -> row index. It holds vectors of exactly one
version (the store's serving version) and answers only for that version; a reader asking
for another version, or for an id the copy lacks, reads RocksDB as before.

How it stays equal to the store:

- writes: after a write batch commits, the writer :meth:`~ServingCache.upsert`\\ s the
  vectors it wrote at the cache's version and :meth:`~ServingCache.discard`\\ s the ones
  it evicted; a write at another version is ignored;
- reads that missed and warming scans :meth:`~ServingCache.fill` only ids the copy does
  not hold yet, so a value read before a later commit can never overwrite that commit's
  upsert; and a fill carries the :attr:`~ServingCache.epoch` seen before its RocksDB read,
  which every discard and reset advances, so a value read before an eviction or a version
  change is dropped instead of coming back;
- a change of serving version :meth:`~ServingCache.reset`\\ s it; every call names the
  version it is for, and a call for any other version does nothing.

It fills until its byte budget is spent and then stops taking new ids (ids it holds are
still updated); a restart or a version change starts it afresh. The budget bounds the
allocated matrices (grown geometrically, never past it), not only the rows in use; growing
briefly holds the old matrix and the new one. Every method takes one lock, so a reader
never sees a half-written row.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CacheHits", "ServingCache"]

#: Estimated bytes an id costs beyond its vector: the dict entry, the key string, the
#: timestamp. Counted against the budget so it bounds memory, not only matrix bytes.
_ID_OVERHEAD_BYTES = 120
_FIRST_ROWS = 1024


@dataclass(frozen=True)
class CacheHits:
    """What the copy held for one read: ``positions[i]`` is the request position of row
    ``vectors[i]``; ``updated_at_ms[i]`` its write time. Positions are increasing."""

    positions: np.ndarray
    vectors: np.ndarray
    updated_at_ms: np.ndarray
    #: The cache's epoch at this read: pass it to :meth:`ServingCache.fill`.
    epoch: int = 0


class _KindTable:
    """The rows of one kind: an id index over a growable matrix."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.index: dict[str, int] = {}
        self.matrix = np.empty((0, dim), dtype=np.float32)
        self.updated = np.empty(0, dtype=np.int64)
        self.free: list[int] = []

    @property
    def rows(self) -> int:
        return len(self.index)

    @property
    def capacity(self) -> int:
        return int(self.matrix.shape[0])

    def slots(self, count: int, spare_rows: int) -> np.ndarray:
        """Rows to write ``count`` new ids into (freed rows first), growing the matrix
        geometrically by at most ``spare_rows``; fewer when it is full and may not grow."""
        reused = [self.free.pop() for _ in range(min(count, len(self.free)))]
        high = len(self.index) + len(self.free) + len(reused)  # rows below it are taken or free
        wanted = min(count - len(reused), max(0, self.capacity + spare_rows - high))
        if high + wanted > self.capacity:
            grown = min(max(_FIRST_ROWS, 2 * self.capacity, high + wanted), self.capacity + spare_rows)
            matrix = np.empty((grown, self.dim), dtype=np.float32)
            matrix[:high] = self.matrix[:high]
            updated = np.empty(grown, dtype=np.int64)
            updated[:high] = self.updated[:high]
            self.matrix, self.updated = matrix, updated
        return np.concatenate([np.asarray(reused, dtype=np.int64), np.arange(high, high + wanted)])


class ServingCache:
    """The serving version's vectors in memory, bounded by ``budget_bytes`` (module docs)."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError("a serving cache needs a positive budget")
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._version: int | None = None
        self._tables: dict[str, _KindTable] = {}
        self._epoch = 0

    @property
    def version(self) -> int | None:
        return self._version

    @property
    def epoch(self) -> int:
        """Advanced by every discard and reset: fills read before it are dropped."""
        return self._epoch

    @property
    def used_bytes(self) -> int:
        """Bytes of the ids held (vectors, timestamps and an estimate per id)."""
        with self._lock:
            return sum(table.rows * _row_bytes(table.dim) for table in self._tables.values())

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the rows allocated (held or spare), what the budget bounds."""
        with self._lock:
            return self._allocated_locked()

    def _allocated_locked(self) -> int:
        return sum(table.capacity * _row_bytes(table.dim) for table in self._tables.values())

    def held(self, kind: str) -> int:
        """How many ids of ``kind`` the copy holds."""
        table = self._tables.get(kind)
        return 0 if table is None else table.rows

    def full(self) -> bool:
        """No room for another id of any kind held so far."""
        with self._lock:
            spare = self.budget_bytes - self._allocated_locked()
            return all(
                not table.free and table.rows >= table.capacity and spare < _row_bytes(table.dim)
                for table in self._tables.values()
            ) and bool(self._tables)

    def reset(self, version: int | None) -> None:
        """Drop everything and hold ``version`` from now on (``None``: hold nothing)."""
        with self._lock:
            self._version = version
            self._tables = {}
            self._epoch += 1

    def read(self, kind: str, version: int, ids: Sequence[str]) -> CacheHits | None:
        """The rows held for ``ids`` at ``version``; ``None`` when the copy holds another
        version (then nothing it has may be served, nor should reads fill it)."""
        with self._lock:
            if version != self._version:
                return None
            table = self._tables.get(kind)
            if table is None:
                empty = np.empty(0, dtype=np.int64)
                return CacheHits(empty, np.empty((0, 0), dtype=np.float32), empty, self._epoch)
            get = table.index.get
            rows = np.fromiter((get(entity_id, -1) for entity_id in ids), dtype=np.int64, count=len(ids))
            positions = np.flatnonzero(rows >= 0)
            picked = rows[positions]
            return CacheHits(positions, table.matrix[picked], table.updated[picked], self._epoch)

    def upsert(
        self,
        kind: str,
        version: int,
        ids: Sequence[str],
        vectors: np.ndarray,
        updated_at_ms: int | np.ndarray,
        forward: bool = False,
    ) -> None:
        """Committed writes: replace held ids, add new ones while the budget allows (the
        store never gives the cache forward vectors: it answers native ones only)."""
        with self._lock:
            if version != self._version or not len(ids):
                return
            table = self._tables.get(kind)
            if table is not None and table.dim != vectors.shape[1]:
                # A version has one dimension; rows of another are left to RocksDB, and
                # the ids' old rows must not outlive the write that replaced them.
                self._discard_locked(table, ids)
                return
            self._write_locked(kind, ids, vectors, updated_at_ms, replace=True)

    def fill(
        self,
        kind: str,
        version: int,
        ids: Sequence[str],
        vectors: np.ndarray,
        updated_at_ms: np.ndarray,
        epoch: int,
    ) -> bool:
        """Vectors read from the store after :attr:`epoch` was ``epoch``: add ids not held
        yet, never replace a held one. Dropped (returns False) if a discard or a reset came
        in between, as the values read may be gone from the store by now."""
        with self._lock:
            if version != self._version or epoch != self._epoch:
                return False
            table = self._tables.get(kind)
            if len(ids) and (table is None or table.dim == vectors.shape[1]):
                self._write_locked(kind, ids, vectors, updated_at_ms, replace=False)
            return True

    def discard(self, kind: str, version: int, ids: Sequence[str]) -> None:
        """Ids whose vector of ``version`` left the store (evicted by newer versions)."""
        with self._lock:
            if version != self._version or not len(ids):
                return
            table = self._tables.get(kind)
            if table is None:
                self._epoch += 1
            else:
                self._discard_locked(table, ids)

    def _discard_locked(self, table: _KindTable, ids: Sequence[str]) -> None:
        # Held or not: a fill in flight may carry a value read before this discard.
        self._epoch += 1
        for entity_id in ids:
            row = table.index.pop(entity_id, None)
            if row is not None:
                table.free.append(row)

    def _write_locked(
        self,
        kind: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        updated_at_ms: int | np.ndarray,
        replace: bool,
    ) -> None:
        dim = int(vectors.shape[1])
        table = self._tables.get(kind)
        if table is None:
            table = self._tables[kind] = _KindTable(dim)
        index = table.index
        stamps = np.broadcast_to(np.asarray(updated_at_ms, dtype=np.int64), (len(ids),))
        get = index.get
        rows = np.fromiter((get(entity_id, -1) for entity_id in ids), dtype=np.int64, count=len(ids))
        held = rows >= 0
        if replace and held.any():
            table.matrix[rows[held]] = vectors[held]
            table.updated[rows[held]] = stamps[held]
        if held.all():
            return
        new = np.flatnonzero(~held)
        if len({ids[at] for at in new.tolist()}) != len(new):  # a read may name an id twice
            once = {ids[at]: at for at in new.tolist()}  # one row each (a read's copies are equal)
            new = np.fromiter(once.values(), dtype=np.int64, count=len(once))
        spare_rows = max(0, (self.budget_bytes - self._allocated_locked()) // _row_bytes(dim))
        slots = table.slots(len(new), spare_rows)
        if not len(slots):
            return
        new = new[: len(slots)]
        index.update(zip([ids[at] for at in new.tolist()], slots.tolist(), strict=True))
        table.matrix[slots] = vectors[new]
        table.updated[slots] = stamps[new]


def _row_bytes(dim: int) -> int:
    """What one id costs: its float32 row, its timestamp and the index's share."""
    return dim * 4 + 8 + _ID_OVERHEAD_BYTES
