"""The most popular items: what a recommendation answers for a user with no vector at all.

Popularity is an item's interactions of the last day, all types, decayed to now (its state's
24 h counts, :func:`models.state_batch.item_popularity`). The ranking is recomputed from the
item states by a scan (:meth:`PopularItems.refresh`, every half minute in a worker; while the
store holds fewer items than the ranking keeps, the scan is small and :meth:`PopularItems.top`
runs it itself when the ranking is older than half a second), so serving it costs nothing;
callers keep only items that have a vector at the version they answer, so a fallback never
mixes versions either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

import numpy as np

from models.state_batch import item_popularity
from store.vector_store import VersionedVectorStore

__all__ = ["PopularItems"]


class PopularItems:
    """The ``size`` most popular items of a store, as of the last :meth:`refresh`."""

    def __init__(
        self,
        store: VersionedVectorStore,
        size: int = 2_000,
        chunk: int = 50_000,
        small_max_age_s: float = 0.5,
    ) -> None:
        self.store = store
        self.small_max_age_s = small_max_age_s
        self.size = size
        self.chunk = chunk
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._scores = np.empty(0)
        self.refreshed_at: float | None = None  # monotonic time of the last refresh

    @property
    def full(self) -> bool:
        """Whether the ranking holds ``size`` items (fewer: the store has fewer items so far)."""
        with self._lock:
            return len(self._ids) >= self.size

    def refresh(self, now_ms: int | None = None) -> int:
        """Rank every item by its popularity now; returns how many items were read."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        best_ids: list[str] = []
        best = np.empty(0)
        ids: list[str] = []
        states: list[bytes] = []
        read = 0

        def keep_best() -> None:
            nonlocal best_ids, best
            scores = np.concatenate([best, item_popularity(states, now_ms)])
            pool = best_ids + ids
            order = np.argsort(-scores, kind="stable")[: self.size]
            best_ids, best = [pool[i] for i in order], scores[order]

        for item_id, state in self.store.iter_states("item"):
            ids.append(item_id)
            states.append(state)
            read += 1
            if len(ids) >= self.chunk:
                keep_best()
                ids, states = [], []
        if ids:
            keep_best()
        with self._lock:
            self._ids, self._scores = best_ids, best
            self.refreshed_at = time.monotonic()
        return read

    def top(
        self, k: int, has_vector: Callable[[str], bool], exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        """The ``k`` most popular items that ``has_vector`` accepts (those with a vector at the
        version answered), best first, leaving out ``exclude``. While the store holds fewer
        items than the ranking keeps (a new store filling up), a ranking older than
        ``small_max_age_s`` or shorter than ``k`` is redone first: the scan is small, and a new
        item counts at once."""
        with self._lock:
            held, refreshed = len(self._ids), self.refreshed_at
        if held < self.size and (
            held < k or refreshed is None or time.monotonic() - refreshed > self.small_max_age_s
        ):
            self.refresh()
        with self._lock:
            ids, scores = self._ids, self._scores
        found = []
        for item_id, score in zip(ids, scores.tolist(), strict=True):
            if item_id not in exclude and has_vector(item_id):
                found.append((item_id, score))
                if len(found) >= k:
                    break
        return found
