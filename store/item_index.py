"""Nearest-neighbour search over the item vectors of one encoder version.

Two segments answer every query together::

    write (in the store's commit) --> fresh segment (exact: one matrix product)
                                           |  merger thread, a chunk at a time
                                           v
                                      graph segment (HNSW, hnswlib)

- A write lands in the fresh segment inside the store's commit, so a query sees an item as
  soon as a lookup would. An item already in the graph stops being live there at once
  (searches skip its row); the merger marks the row deleted in the graph later, so the
  commit never waits for the graph.
- The merger (:meth:`ItemIndex.merge_step`, run by :class:`store.item_indexes.ItemIndexes`)
  moves fresh rows into the graph once enough gathered or the oldest waited long enough.
  A row written again while it was being moved stays fresh; the moved copy is dropped.
- A query searches both and merges by score, leaving out ids it was asked to exclude.

Every call into the graph holds one lock: hnswlib does not let a search run beside an add.
Searches go first (:class:`_SearchFirstLock`), and adds go in slices of :data:`_ADD_SLICE`
rows, so a search waits for one slice at most. Rows
being added are searchable before the merge records whose they are: a search skips them
and, if that leaves fewer than ``k``, asks the graph for more.

A write of an item already in the graph deletes its old graph row (hnswlib marks it; the
slot stays). Once deleted rows outnumber live ones, the merger compacts: it copies the live
rows into a new graph and swaps it in (:meth:`ItemIndex.compact`), so the graph grows with
the items, not with their updates.

Longer than the 400 lines modules keep to, for one reader: the fresh segment, the graph, the
merger and compaction share one locking protocol (searches first, updates in slices), which
is only checkable read in one place.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import hnswlib
import numpy as np

__all__ = ["IndexTuning", "ItemIndex", "Neighbours"]

_FIRST_ROWS = 1024
#: Graph searches per query at most, each asking for twice as many rows as the last.
_SEARCH_ATTEMPTS = 6
#: Rows per call adding to the graph: what a search may have to wait for.
_ADD_SLICE = 16
#: How long an update of the graph lets searches go first before it goes next.
_UPDATE_PATIENCE_S = 0.002
#: Labels marked deleted per hold of the graph's lock.
_MARK_SLICE = 1_024
#: Rows copied per step of a compaction (one hold of the graph's lock).
_COPY_CHUNK = 1_000


@dataclass(frozen=True)
class IndexTuning:
    """HNSW parameters and when fresh rows move into the graph."""

    #: HNSW links per node (M) and the breadth of the search while adding.
    connectivity: int = 16
    ef_construction: int = 200
    #: Breadth of the search when querying (raised per query to the count asked for).
    ef_search: int = 64
    #: Move fresh rows into the graph once this many gathered, or ...
    merge_rows: int = 1024
    #: ... once the oldest fresh row is this old.
    merge_after_s: float = 2.0
    #: Rows moved per merge step (the merger's unit of work); with more than this waiting,
    #: the merger adds with ``build_threads``.
    merge_chunk: int = 2048
    #: Threads the merger adds with, and a build from the store (or a backlog, a compaction).
    threads: int = 1
    build_threads: int = 2
    #: Compact once deleted graph rows outnumber live ones and are at least this many.
    compact_min_deleted: int = 10_000


@dataclass(frozen=True)
class Neighbours:
    """Items nearest to a query, best first: ``ids[i]`` scored ``scores[i]`` (inner product)."""

    ids: list[str]
    scores: list[float]


class _FreshSegment:
    """Items written since they last went into the graph: an id index over a matrix."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.row_of: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.matrix = np.empty((0, dim), dtype=np.float32)
        self.seq = np.empty(0, dtype=np.int64)
        self.live = np.zeros(0, dtype=bool)
        self.free: list[int] = []
        self.oldest = math.inf  # monotonic time the oldest row was written

    def __len__(self) -> int:
        return len(self.row_of)

    def put(self, entity_id: str, vector: np.ndarray, seq: int) -> None:
        row = self.row_of.get(entity_id)
        if row is None:
            row = self.free.pop() if self.free else len(self.ids)
            if row == len(self.ids):
                self.ids.append(None)
            if row >= self.matrix.shape[0]:
                grown = max(_FIRST_ROWS, 2 * self.matrix.shape[0])
                self.matrix = np.resize(self.matrix, (grown, self.dim))
                self.seq = np.resize(self.seq, grown)
                live = np.zeros(grown, dtype=bool)
                live[: self.live.shape[0]] = self.live
                self.live = live
            self.row_of[entity_id] = row
            self.ids[row] = entity_id
            self.live[row] = True
            if not math.isfinite(self.oldest):
                self.oldest = time.monotonic()
        self.matrix[row] = vector
        self.seq[row] = seq

    def remove(self, entity_id: str) -> None:
        row = self.row_of.pop(entity_id, None)
        if row is not None:
            self.ids[row] = None
            self.live[row] = False
            self.free.append(row)
        if not self.row_of:
            self.oldest = math.inf

    def seq_of(self, entity_id: str) -> int | None:
        row = self.row_of.get(entity_id)
        return None if row is None else int(self.seq[row])

    def take(self, limit: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """A copy of up to ``limit`` rows (ids, vectors, write sequence numbers)."""
        rows = np.fromiter(self.row_of.values(), dtype=np.int64, count=len(self.row_of))[:limit]
        return [self.ids[row] or "" for row in rows], self.matrix[rows].copy(), self.seq[rows].copy()

    def search(self, query: np.ndarray, count: int) -> list[tuple[float, str]]:
        """The ``count`` best (score, id) pairs, exactly."""
        if not self.row_of or count <= 0:
            return []
        used = len(self.ids)
        scores = self.matrix[:used] @ query
        live = self.live[:used]
        scores[~live] = -np.inf
        count = min(count, len(self.row_of))
        best = np.argpartition(-scores, count - 1)[:count] if count < used else np.arange(used)
        return [(float(scores[row]), self.ids[row] or "") for row in best if live[row]]


class _SearchFirstLock:
    """Exclusive access to a graph, searches first: an update (add, delete, resize, copy)
    waits while a search runs or waits, so a query waits for one update slice at most; an
    update that has waited :data:`_UPDATE_PATIENCE_S` goes next, so a stream of queries
    cannot stall merges."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._searches_waiting = 0
        self._update_since: float | None = None  # when the waiting update began to wait

    def _update_overdue(self) -> bool:
        since = self._update_since
        return since is not None and time.monotonic() - since >= _UPDATE_PATIENCE_S

    @contextlib.contextmanager
    def search(self) -> Iterator[None]:
        with self._cond:
            self._searches_waiting += 1
            while self._busy or self._update_overdue():
                self._cond.wait(_UPDATE_PATIENCE_S)
            self._searches_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def update(self) -> Iterator[None]:
        with self._cond:
            self._update_since = time.monotonic()
            while self._busy or (self._searches_waiting and not self._update_overdue()):
                self._cond.wait(_UPDATE_PATIENCE_S)
            self._update_since = None
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()


class ItemIndex:
    """The item vectors of one version: a fresh segment and an HNSW graph (module docs)."""

    def __init__(self, version: int, dim: int, tuning: IndexTuning | None = None, capacity: int = 0) -> None:
        self.version = version
        self.dim = dim
        self.tuning = tuning or IndexTuning()
        self._lock = threading.Lock()  # the id maps and the fresh segment
        self._graph_lock = _SearchFirstLock()  # every call into the graph
        self._adding = threading.Lock()  # one adder at a time (merger, bulk load, compaction)
        self._graph = self._new_graph(capacity)
        self._ef = self.tuning.ef_search
        self._fresh = _FreshSegment(dim)
        self._id_of: dict[int, str] = {}  # live graph label -> id
        self._label_of: dict[str, int] = {}  # id -> its live graph label
        self._marked = 0  # graph labels marked deleted (the graph skips them itself)
        self._unmarked: list[int] = []  # labels no longer live, not yet marked in the graph
        self._next_label = 0
        self._seq = 0
        #: Ids written or removed since a bulk load began (see :meth:`load`).
        self._touched: set[str] | None = None
        #: Graph labels deleted while a compaction copies (replayed on the new graph).
        self._deleted_while_copying: list[int] | None = None
        self.compactions = 0

    def _new_graph(self, capacity: int) -> hnswlib.Index:
        graph = hnswlib.Index(space="ip", dim=self.dim)
        graph.init_index(
            max_elements=max(_FIRST_ROWS, capacity),
            M=self.tuning.connectivity,
            ef_construction=self.tuning.ef_construction,
        )
        graph.set_ef(self.tuning.ef_search)
        graph.set_num_threads(1)
        return graph

    # ----- sizes -------------------------------------------------------------------------

    def __len__(self) -> int:
        """Items searchable (fresh and graph)."""
        with self._lock:
            return len(self._fresh) + len(self._label_of)

    @property
    def fresh_rows(self) -> int:
        return len(self._fresh)

    @property
    def graph_rows(self) -> int:
        return len(self._label_of)

    def __contains__(self, entity_id: object) -> bool:
        with self._lock:
            return entity_id in self._fresh.row_of or entity_id in self._label_of

    # ----- writes (the store's commit) ---------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Items written at this version: searchable from now on with these vectors."""
        vectors = np.asarray(vectors, dtype=np.float32)
        with self._lock:
            superseded = []
            for entity_id, vector in zip(ids, vectors, strict=True):
                self._seq += 1
                superseded.append(self._label_of.pop(entity_id, None))
                self._fresh.put(entity_id, vector, self._seq)
                if self._touched is not None:
                    self._touched.add(entity_id)
            self._delete_locked(superseded)

    def discard(self, ids: Sequence[str]) -> None:
        """Items whose vector of this version left the store: never returned again."""
        with self._lock:
            removed = []
            for entity_id in ids:
                removed.append(self._label_of.pop(entity_id, None))
                self._fresh.remove(entity_id)
                if self._touched is not None:
                    self._touched.add(entity_id)
            self._delete_locked(removed)

    def _delete_locked(self, maybe_labels: list[int | None]) -> None:
        """Graph labels no longer live: searches skip them from now on, and the merger marks
        them deleted in the graph (the commit path never waits for the graph)."""
        labels = [label for label in maybe_labels if label is not None]
        if not labels:
            return
        for label in labels:
            self._id_of.pop(label, None)
        self._unmarked.extend(labels)
        if self._deleted_while_copying is not None:
            self._deleted_while_copying.extend(labels)

    def marks_due(self) -> bool:
        """Labels wait to be marked deleted in the graph (:meth:`mark_pending`)."""
        return bool(self._unmarked)

    def mark_pending(self) -> int:
        """Mark in the graph the labels that stopped being live (the merger's job); returns
        how many. Searches skip them meanwhile."""
        with self._adding:  # never beside a compaction, which swaps the graph
            with self._lock:
                labels, self._unmarked = self._unmarked, []
            done = 0
            try:
                for start in range(0, len(labels), _MARK_SLICE):
                    with self._graph_lock.update():
                        for label in labels[start : start + _MARK_SLICE]:
                            self._graph.mark_deleted(label)
                            self._marked += 1  # with the mark, so searches count it right
                            done += 1
            except BaseException:
                with self._lock:  # the rest is tried again; the one that failed is not
                    self._unmarked[:0] = labels[done + 1 :]
                raise
            return done

    # ----- bulk load (start-up, from the store) ------------------------------------------

    def begin_load(self) -> None:
        """From now on remember which ids are written or removed, so :meth:`load` never
        puts back a value older than one the store committed since."""
        with self._lock:
            self._touched = set()

    def load(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """Items read from the store after :meth:`begin_load`: straight into the graph,
        except ids written or removed since (the index holds newer). Returns how many went in."""
        with self._adding:  # rows added and recorded before a compaction can copy the graph
            return self._load_adding(ids, vectors)

    def _load_adding(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        with self._lock:
            touched = self._touched or set()
            keep = [
                at
                for at, entity_id in enumerate(ids)
                if entity_id not in touched
                and entity_id not in self._label_of
                and entity_id not in self._fresh.row_of
            ]
            labels = self._reserve_locked(len(keep))
        if not keep:
            return 0
        picked = [ids[at] for at in keep]
        # One call: nothing searches an index while it is being built (ItemIndexes.index).
        rows = np.asarray(vectors, dtype=np.float32)[keep]
        self._add_to_graph(rows, labels, self.tuning.build_threads, slice_rows=len(labels))
        with self._lock:
            touched = self._touched or set()
            stale: list[int | None] = []
            for entity_id, label in zip(picked, labels, strict=True):
                if entity_id in touched or entity_id in self._label_of or entity_id in self._fresh.row_of:
                    stale.append(label)  # written or removed meanwhile: the copy is stale
                else:
                    self._label_of[entity_id], self._id_of[label] = label, entity_id
            self._delete_locked(stale)
        return len(labels) - len(stale)

    def end_load(self) -> None:
        with self._lock:
            self._touched = None

    # ----- the merger ---------------------------------------------------------------------

    def merge_due(self) -> bool:
        """Whether :meth:`merge_step` has rows to move now."""
        fresh = self._fresh
        return len(fresh) >= self.tuning.merge_rows or (
            len(fresh) > 0 and time.monotonic() - fresh.oldest >= self.tuning.merge_after_s
        )

    def merge_step(self, force: bool = False) -> int:
        """Move one chunk of fresh rows into the graph (when due, or always with ``force``).
        Returns how many rows moved."""
        with self._adding:  # rows added and recorded before a compaction can copy the graph
            return self._merge_adding(force)

    def _merge_adding(self, force: bool) -> int:
        with self._lock:
            due = len(self._fresh) > 0 and (force or self.merge_due())
            if not due:
                return 0
            ids, vectors, seqs = self._fresh.take(self.tuning.merge_chunk)
            labels = self._reserve_locked(len(ids))
            backlog = len(self._fresh) > self.tuning.merge_chunk
        self._add_to_graph(vectors, labels, self.tuning.build_threads if backlog else self.tuning.threads)
        with self._lock:
            stale: list[int | None] = []
            for entity_id, label, seq in zip(ids, labels, seqs.tolist(), strict=True):
                if self._fresh.seq_of(entity_id) == seq:  # not written again meanwhile
                    self._fresh.remove(entity_id)
                    self._label_of[entity_id], self._id_of[label] = label, entity_id
                else:
                    stale.append(label)  # the moved copy is stale
            self._delete_locked(stale)
            if len(self._fresh):  # what is left waits its own turn, not the moved rows'
                self._fresh.oldest = time.monotonic()
        return len(labels) - len(stale)

    def merge_all(self) -> None:
        """Move every fresh row into the graph now (tests, benchmarks, a bulk build)."""
        while self.fresh_rows:
            self.merge_step(force=True)
        self.mark_pending()

    def _reserve_locked(self, count: int) -> list[int]:
        """``count`` new graph labels, skipped by searches until their ids are set."""
        first = self._next_label
        self._next_label += count
        return list(range(first, first + count))

    def _add_to_graph(
        self, vectors: np.ndarray, labels: list[int], threads: int | None = None, slice_rows: int = _ADD_SLICE
    ) -> None:
        """Add rows, ``slice_rows`` per hold of the graph's lock (the caller holds ``_adding``)."""
        keys = np.asarray(labels, dtype=np.int64)
        for start in range(0, len(labels), slice_rows):
            with self._graph_lock.update():
                graph = self._graph
                needed = graph.get_current_count() + min(slice_rows, len(labels) - start)
                if needed > graph.get_max_elements():
                    graph.resize_index(max(needed, 2 * graph.get_max_elements()))
                graph.add_items(
                    vectors[start : start + slice_rows],
                    keys[start : start + slice_rows],
                    num_threads=threads or self.tuning.threads,
                )

    # ----- compaction ---------------------------------------------------------------------

    def compact_due(self) -> bool:
        """Deleted graph rows outnumber live ones (and are at least ``compact_min_deleted``)."""
        dead = self._marked + len(self._unmarked)
        return dead >= max(self.tuning.compact_min_deleted, len(self._label_of) + 1)

    def compact(self) -> None:
        """Copy the live graph rows into a new graph and swap it in; deletes made while
        copying are replayed on it. Searches and writes go on meanwhile (merges wait)."""
        with self._adding:
            with self._lock:
                labels = list(self._id_of)
                self._deleted_while_copying = []
            graph = self._new_graph(int(len(labels) * 1.25) + self.tuning.merge_chunk)
            copied: set[int] = set()
            try:
                for start in range(0, len(labels), _COPY_CHUNK):
                    with self._lock:
                        live = self._id_of
                        part = [label for label in labels[start : start + _COPY_CHUNK] if label in live]
                    # A label deleted from here on is still in the graph (only the holder of
                    # _adding marks deletions) and is replayed on the new graph below.
                    with self._graph_lock.update():
                        vectors = np.asarray(self._graph.get_items(part) if part else [], dtype=np.float32)
                    if part:
                        graph.add_items(
                            vectors, np.asarray(part, dtype=np.int64), num_threads=self.tuning.build_threads
                        )
                        copied.update(part)
                with self._lock, self._graph_lock.update():
                    replayed = [label for label in self._deleted_while_copying if label in copied]
                    for label in replayed:
                        graph.mark_deleted(label)
                    self._graph, self._marked, self._ef = graph, len(replayed), self.tuning.ef_search
                    # labels deleted before they were copied are not in the new graph, and
                    # those deleted since were marked just now: nothing is left to mark
                    self._unmarked = []
                    self.compactions += 1
            finally:
                with self._lock:
                    self._deleted_while_copying = None

    # ----- queries ------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, exclude: Collection[str] = ()) -> Neighbours:
        """The ``k`` items nearest to ``query`` (inner product), leaving out ``exclude``."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"a query of dimension {query.shape[0]} for an index of dimension {self.dim}")
        with self._lock:
            found = self._fresh.search(query, k + len(exclude))
            graph_live = len(self._label_of)
        found = [(score, entity_id) for score, entity_id in found if entity_id not in exclude]
        if graph_live:
            found.extend(self._search_graph(query, k, exclude))
        found.sort(key=lambda pair: (-pair[0], pair[1]))
        best: dict[str, float] = {}  # an id moved from fresh to graph meanwhile is found twice
        for score, entity_id in found:
            if len(best) == k:
                break
            best.setdefault(entity_id, score)
        return Neighbours(list(best), list(best.values()))

    def _search_graph(self, query: np.ndarray, k: int, exclude: Collection[str]) -> list[tuple[float, str]]:
        """Up to ``k`` live graph rows not excluded, asking the graph for more while rows it
        returns are excluded or still being added (a bounded number of times)."""
        ask = k + len(exclude)
        ceiling: int | None = None  # the smallest count the graph failed to return
        found: list[tuple[float, str]] = []
        for _ in range(_SEARCH_ATTEMPTS):
            with self._graph_lock.search():
                total = max(1, self._graph.get_current_count() - self._marked)
                ask = max(1, min(ask, total, ceiling - 1 if ceiling else total))
                ef = max(self.tuning.ef_search, ask)
                if ef != self._ef:
                    self._graph.set_ef(ef)
                    self._ef = ef
                try:
                    labels, distances = self._graph.knn_query(query, k=ask, num_threads=1)
                except RuntimeError:  # the graph reached fewer rows than asked
                    ceiling = ask
                    if ask == 1:
                        return found
                    ask //= 2
                    continue
            with self._lock:
                id_of = self._id_of
                found = [
                    (1.0 - float(distance), id_of[label])
                    for label, distance in zip(labels[0].tolist(), distances[0].tolist(), strict=True)
                    if label in id_of and id_of[label] not in exclude
                ]
            grown = min(2 * ask, total, ceiling - 1 if ceiling else total)
            if len(found) >= k or grown <= ask:
                return found
            ask = grown
        return found
