"""The item indexes of a store: one :class:`~store.item_index.ItemIndex` per encoder version,
kept equal to the store's item vectors of that version.

- Writes: the manager is a commit listener of the store (like the serving cache). After a
  write batch commits, every item vector it wrote at an indexed version is upserted into
  that version's index, and every vector it evicted is discarded from it. An indexed older
  version that is no longer written (not serving, staged or retained: :meth:`track`'s
  ``fresh``) gets the serving vectors carried back through the aligners instead, as a read
  at that version does (:mod:`store.lookup`), so its answers never go stale.
- Builds: :meth:`ItemIndexes.track` names the versions wanted (serving, staged, then the
  newest others held while ``keep`` allows, such as the version rolled back from). A new
  index is built from the store in the background: the builder scans the version's item
  vectors into the graph while commits keep flowing into the fresh segment (a value
  scanned before a later commit never replaces it).
- Merges: one thread moves fresh rows into each index's graph (see :mod:`store.item_index`).

An index answers queries once built (:meth:`ItemIndexes.status`); before that, callers say
it is being built. Indexes live in memory: a restart builds them again from the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from store.item_index import IndexTuning, ItemIndex
from store.lookup import CarryProvider
from store.vector_store import VersionedVectorStore

__all__ = ["IndexStatus", "ItemIndexes"]

log = logging.getLogger("embstream.index")

#: ``progress(version, done, total)`` while a build scans the store.
BuildProgress = Callable[[int, int, int], None]
#: Seconds before a failed build or merge is tried again.
_RETRY_S = 5.0


def _at_low_priority(target: Callable[[], None]) -> Callable[[], None]:
    """``target``, run by a thread at nice 10 where the system allows it (Linux sets niceness
    per thread): index work yields the cores to the stream worker under load and catches up
    when they are idle."""

    def run() -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        target()

    return run


@dataclass(frozen=True)
class IndexStatus:
    """One version's index: ``building`` until its build finished; ``ready`` once built
    and its graph holds all but at most one merge chunk of its items."""

    version: int
    building: bool
    ready: bool
    items: int
    graph_items: int
    fresh_items: int
    built_items: int
    build_total: int
    #: Items whose vector of the version is a forward entry (a hot swap's forward fill, until
    #: the native backfill replaces it).
    forward_items: int = 0


class ItemIndexes:
    """Per-version item indexes fed by the store's commits (module docs)."""

    def __init__(
        self,
        store: VersionedVectorStore,
        dim_of: Callable[[int], int],
        keep: int = 2,
        tuning: IndexTuning | None = None,
        build_chunk: int = 10_000,
        on_build_progress: BuildProgress | None = None,
        carry: CarryProvider | None = None,
    ) -> None:
        """``dim_of(version)`` gives a version's vector dimension; ``keep`` bounds how many
        versions keep an index (the serving and staged versions always do); ``carry`` takes
        serving vectors back to an older version (:data:`store.lookup.CarryProvider`)."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.store = store
        self.dim_of = dim_of
        self.keep = keep
        self.tuning = tuning or IndexTuning()
        self.build_chunk = build_chunk
        self.on_build_progress = on_build_progress
        self._lock = threading.Lock()
        self._indexes: dict[int, ItemIndex] = {}
        self._building: dict[int, tuple[int, int]] = {}  # version -> (scanned, total)
        self._queue: list[tuple[int, ItemIndex]] = []  # builds to run, oldest first
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retry_at: dict[tuple[int, str], float] = {}  # (version, step) -> not before
        self.carry = carry
        self._serving: int | None = None
        self._fresh: frozenset[int] = frozenset()  # versions written natively on every refresh
        # Per version: the items whose vector is a forward entry, and (while its index is
        # built) the items written natively meanwhile, which the build's scan must not mark.
        self._forward: dict[int, set[str]] = {}
        self._native_since_build: dict[int, set[str]] = {}
        store.add_commit_listener(self)

    # ----- which versions -----------------------------------------------------------------

    def track(self, serving: int | None, staged: int | None = None, fresh: Sequence[int] = ()) -> None:
        """Index ``serving`` and ``staged``, then other versions already indexed or held in
        the store (newest first) while ``keep`` allows; drop indexes past that bound.
        ``fresh``: versions besides these two that workers still write natively (retained);
        other indexed versions older than ``serving`` are fed carried serving vectors."""
        with self._lock:
            self._serving = serving
            self._fresh = frozenset(v for v in (serving, staged, *fresh) if v is not None)
        wanted: list[int] = [v for v in (serving, staged) if v is not None]
        held = sorted(self.store.version_counts().get("item", {}), reverse=True)
        with self._lock:
            kept = sorted(self._indexes, reverse=True)
        for version in [*kept, *held]:
            if len(wanted) >= self.keep:
                break
            if version not in wanted:
                wanted.append(version)
        dims: dict[int, int] = {}
        for version in wanted:
            if version not in self._indexes:
                try:
                    dims[version] = self.dim_of(version)
                except Exception as error:  # e.g. deleted from the registry: nothing to index it with
                    log.warning("item index of version %d not built: %s", version, error)
        with self._lock:
            for version in [v for v in self._indexes if v not in wanted]:
                del self._indexes[version]
                self._forward.pop(version, None)
                self._building.pop(version, None)
                log.info("item index of version %d dropped (more than %d versions)", version, self.keep)
            for version, dim in dims.items():
                if version not in self._indexes:
                    expected = self._expected(version)
                    index = ItemIndex(version, dim, self.tuning, capacity=expected)
                    index.begin_load()  # before it sees any write, so the scan never undoes one
                    self._indexes[version] = index
                    self._building[version] = (0, expected)
                    self._queue.append((version, index))
        self._wake.set()

    def _expected(self, version: int) -> int:
        return self.store.version_counts().get("item", {}).get(version, 0)

    @property
    def versions(self) -> list[int]:
        with self._lock:
            return sorted(self._indexes)

    def index(self, version: int) -> ItemIndex | None:
        """The index of ``version`` if it is built (``None``: none, or still building)."""
        with self._lock:
            if version in self._building:
                return None
            return self._indexes.get(version)

    def status(self) -> dict[int, IndexStatus]:
        with self._lock:
            indexes, building = dict(self._indexes), dict(self._building)
        result = {}
        for version, index in sorted(indexes.items()):
            fresh, graph = index.fresh_rows, index.graph_rows
            scanned, total = building.get(version, (0, 0))
            result[version] = IndexStatus(
                version=version,
                building=version in building,
                ready=version not in building and fresh <= self.tuning.merge_chunk,
                items=fresh + graph,
                graph_items=graph,
                fresh_items=fresh,
                built_items=scanned,
                build_total=total,
                forward_items=len(self._forward.get(version, ())),
            )
        return result

    # ----- commit listener ----------------------------------------------------------------

    def upsert(
        self,
        kind: str,
        version: int,
        ids: Sequence[str],
        vectors: np.ndarray,
        updated_at_ms: int | np.ndarray,
        forward: bool = False,
    ) -> None:
        if kind != "item":
            return
        index = self._indexes.get(version)
        if index is not None:
            self._mark(version, ids, forward)
            self._upsert(index, ids, vectors)
        if version == self._serving:
            for behind in self._behind():
                carried = self._carried(version, behind.version, vectors)
                if carried is not None:
                    self._upsert(behind, ids, carried)

    def _behind(self) -> list[ItemIndex]:
        """Indexes of versions older than the serving one that are no longer written."""
        serving, fresh = self._serving, self._fresh
        with self._lock:
            indexes = list(self._indexes.values())
        return [i for i in indexes if serving is not None and i.version < serving and i.version not in fresh]

    def _carried(self, source: int, target: int, vectors: np.ndarray) -> np.ndarray | None:
        if self.carry is None or not len(vectors):
            return None
        try:
            return self.carry(source, target)(np.asarray(vectors, dtype=np.float32))
        except Exception as error:  # no chain to it: its index keeps what it has
            log.warning("item index of version %d not fed from version %d: %s", target, source, error)
            return None

    def _upsert(self, index: ItemIndex, ids: Sequence[str], vectors: np.ndarray) -> None:
        if vectors.shape[1] != index.dim:
            log.warning(
                "item vectors of version %d are %d-d, its index %d-d: not indexed",
                index.version,
                vectors.shape[1],
                index.dim,
            )
            index.discard(ids)  # their earlier vectors are gone from the store too
            return
        index.upsert(ids, vectors)
        self._wake.set()

    def discard(self, kind: str, version: int, ids: Sequence[str]) -> None:
        if kind == "item":
            index = self._indexes.get(version)
            if index is not None:
                self._mark(version, ids, False)
                index.discard(ids)

    def _mark(self, version: int, ids: Sequence[str], forward: bool) -> None:
        """Keep ``version``'s forward items as its commits change them (nothing to do for a
        native write to a version without forward items that is not being built)."""
        with self._lock:
            if forward:
                self._forward.setdefault(version, set()).update(ids)
                return
            marked = self._forward.get(version)
            if marked:
                marked.difference_update(ids)
            if version in self._native_since_build:
                self._native_since_build[version].update(ids)

    # ----- background work ----------------------------------------------------------------

    def start(self) -> None:
        """Start the builder and the merger threads (daemons; :meth:`stop` ends them)."""
        self._stop.clear()
        for name, target in (
            ("embstream-index-build", self._build_loop),
            ("embstream-index-merge", self._merge_loop),
        ):
            thread = threading.Thread(target=_at_low_priority(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def _build_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                queued = self._queue.pop(0) if self._queue else None
            if queued is None:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            version, index = queued
            if self._indexes.get(version) is not index or version not in self._building:
                continue  # dropped (or replaced) since it was queued
            try:
                self.build(version, index)
            except Exception:  # e.g. a damaged store: say so, and try again later
                log.exception("item index of version %d not built; trying again in %.0f s", version, _RETRY_S)
                self._stop.wait(_RETRY_S)
                with self._lock:
                    self._queue.append(queued)

    def build(self, version: int, index: ItemIndex) -> None:
        """Scan ``version``'s item vectors into ``index`` (already receiving commits)."""
        started = time.monotonic()
        total = self._expected(version)
        scanned = 0
        scanned_forward: set[str] = set()
        with self._lock:
            self._native_since_build[version] = set()
        chunks = self._chunks(version, index.dim, scanned_forward)
        for ids, vectors in chunks:
            if self._stop.is_set() or self._indexes.get(version) is not index:
                return
            if len(ids):
                index.load(ids, vectors)
            scanned += len(ids)
            with self._lock:
                if version in self._building and self._indexes.get(version) is index:
                    self._building[version] = (scanned, max(total, scanned))
            if self.on_build_progress is not None:
                self.on_build_progress(version, scanned, max(total, scanned))
        if scanned == 0 and self.on_build_progress is not None:
            self.on_build_progress(version, 0, 0)  # an empty store: say it is built all the same
        index.end_load()
        with self._lock:
            native = self._native_since_build.pop(version, set())
            self._forward.setdefault(version, set()).update(scanned_forward - native)
            if self._indexes.get(version) is index:
                self._building.pop(version, None)
        log.info(
            "item index of version %d built: %d items in %.1f s",
            version,
            len(index),
            time.monotonic() - started,
        )

    def _chunks(
        self, version: int, dim: int, forward_ids: set[str]
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """``version``'s item vectors as a read at it resolves them, chunk by chunk (the ids of
        forward entries collected in ``forward_ids``)."""
        serving = self._serving
        if serving is None or version >= serving or version in self._fresh or self.carry is None:
            yield from self.store.iter_vectors(
                "item", version, self.build_chunk, dim=dim, forward_ids=forward_ids
            )
            return
        # No longer written: stale natives give way to serving vectors carried back.
        for ids, vectors, behind, behind_rows in self.store.iter_current_vectors(
            "item", version, serving, self.build_chunk, dim=dim
        ):
            carried = self._carried(serving, version, behind_rows) if behind else None
            if carried is None:
                yield ids, vectors
            else:
                yield ids + behind, np.concatenate([vectors, carried]) if ids else carried

    def _merge_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                indexes = list(self._indexes.values())
            moved = 0
            now = time.monotonic()
            for index in indexes:
                for step, due, run in (
                    ("mark", index.marks_due, index.mark_pending),
                    ("compact", index.compact_due, index.compact),
                    ("merge", index.merge_due, index.merge_step),
                ):
                    if self._retry_at.get((index.version, step), 0.0) > now or not due():
                        continue
                    try:
                        done = run()
                    except Exception:  # each step of each index is tried again on its own
                        log.exception("item index of version %d: %s failed", index.version, step)
                        self._retry_at[(index.version, step)] = now + _RETRY_S
                        continue
                    if step == "merge":
                        moved += done or 0
            if not moved:
                self._wake.wait(0.1)
                self._wake.clear()
