"""The most popular items on a real RocksDB store, and the recommendation fallback for users
with no vector: popular items that have a vector at the version answered."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from models.features import TYPE_CODES, ItemState
from store.item_indexes import ItemIndexes
from store.popular import PopularItems
from store.recommend import recommend_many
from store.vector_store import VersionedVectorStore
from tests.conftest import wait_until

NOW = 1_800_000_000_000
DAY_MS = 86_400_000


def _state(events: list[tuple[str, int]]) -> bytes:
    state = ItemState()
    state.add_many([(TYPE_CODES[kind], ts) for kind, ts in events])
    return state.to_bytes()


def test_items_are_ranked_by_their_last_day_decayed_to_now(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db")
    try:
        writer = store.writer()
        writer.put_state("item", "busy", _state([("view", NOW - 1_000)] * 20))
        writer.put_state("item", "old-busy", _state([("view", NOW - 10 * DAY_MS)] * 500))  # long ago
        writer.put_state("item", "some", _state([("click", NOW - 60_000)] * 5))
        writer.commit()
        popular = PopularItems(store, size=2, chunk=2)
        assert not popular.full
        assert popular.refresh(now_ms=NOW) == 3
        assert popular.full
        top = popular.top(3, lambda item_id: True)
        assert [item_id for item_id, _ in top] == ["busy", "some"]  # at most size, best first
        assert top[0][1] > top[1][1] > 0
        assert popular.top(3, lambda item_id: item_id != "busy") == [top[1]]
    finally:
        store.close()


def test_a_small_store_is_ranked_again_when_asked_so_new_items_count_at_once(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db")
    try:
        popular = PopularItems(store, size=10, small_max_age_s=0.0)
        popular.refresh()
        assert popular.top(3, lambda item_id: True) == []  # nothing yet
        now = int(time.time() * 1000)
        writer = store.writer()
        writer.put_state("item", "new", _state([("view", now)] * 3))
        writer.commit()
        assert [item_id for item_id, _ in popular.top(3, lambda item_id: True)] == ["new"]
        big = PopularItems(store, size=1, small_max_age_s=0.0)
        big.refresh()
        writer = store.writer()
        writer.put_state("item", "newer", _state([("view", now)] * 9))
        writer.commit()
        # a full ranking (a large store) waits for the worker's periodic refresh
        assert [item_id for item_id, _ in big.top(3, lambda item_id: True)] == ["new"]
    finally:
        store.close()


def test_a_user_with_no_vector_gets_popular_items_of_the_version_answered(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db")
    indexes = ItemIndexes(store, dim_of=lambda version: 4)
    try:
        writer = store.writer()
        for item_id, count in (("a", 9), ("b", 5), ("c", 1)):
            writer.put_state("item", item_id, _state([("view", NOW - 1_000)] * count))
        rows = np.eye(4, dtype=np.float32)[:3]
        writer.put_vectors("item", ["a", "c"], 2, rows[:2], NOW)  # "b" has no vector at version 2
        writer.put_vectors("user", ["known"], 2, rows[:1], NOW)
        writer.commit()
        store.set_serving_version(2)
        popular = PopularItems(store)
        popular.refresh(now_ms=NOW)
        indexes.track(serving=2)
        indexes.start()
        wait_until(lambda: indexes.index(2) is not None)
        version, (nobody, known) = recommend_many(store, indexes, ["nobody", "known"], k=3, popular=popular)
        assert version == 2 and nobody is not None and nobody.fallback == "popular"
        assert nobody.items.ids == ["a", "c"] and nobody.user_vector == "none"
        assert known is not None and known.fallback is None and known.user_vector == "native"
        _, (without,) = recommend_many(store, indexes, ["nobody"], k=3)
        assert without is None  # no fallback asked: nothing to give
    finally:
        indexes.stop()
        store.close()
