"""The serving cache: alone, and inside a real RocksDB store (answers equal the store's)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from store.lookup import resolve_many, resolve_matrix
from store.serving_cache import ServingCache
from store.vector_store import VersionedVectorStore

DIM = 8


def rows(*values: float) -> np.ndarray:
    return np.array([[value] * DIM for value in values], dtype=np.float32)


# ----- the cache alone ---------------------------------------------------------------------


def test_read_returns_held_rows_in_request_order() -> None:
    cache = ServingCache(1 << 20)
    cache.reset(3)
    cache.upsert("user", 3, ["a", "b"], rows(1, 2), 100)
    hits = cache.read("user", 3, ["b", "x", "a", "b"])
    assert hits is not None
    assert hits.positions.tolist() == [0, 2, 3]
    assert hits.vectors[:, 0].tolist() == [2, 1, 2]
    assert hits.updated_at_ms.tolist() == [100, 100, 100]


def test_only_the_held_version_is_read_or_written() -> None:
    cache = ServingCache(1 << 20)
    cache.reset(3)
    cache.upsert("user", 4, ["a"], rows(9), 1)  # a staged version's write: not held
    cache.fill("user", 2, ["a"], rows(8), np.array([1]))
    assert cache.held("user") == 0
    cache.upsert("user", 3, ["a"], rows(1), 1)
    assert cache.read("user", 4, ["a"]) is None
    cache.reset(4)
    hits = cache.read("user", 4, ["a"])  # a new version starts empty
    assert hits is not None and hits.positions.tolist() == []
    assert cache.read("user", 3, ["a"]) is None


def test_fill_never_replaces_what_a_commit_wrote() -> None:
    """A reader that read RocksDB before a commit fills after that commit's upsert."""
    cache = ServingCache(1 << 20)
    cache.reset(1)
    cache.upsert("item", 1, ["a"], rows(2), 200)  # the commit
    cache.fill("item", 1, ["a", "b"], rows(1, 5), np.array([100, 150]))  # the late reader
    hits = cache.read("item", 1, ["a", "b"])
    assert hits is not None
    assert hits.vectors[:, 0].tolist() == [2, 5]
    assert hits.updated_at_ms.tolist() == [200, 150]


def test_budget_stops_new_ids_but_held_ones_stay_current() -> None:
    per_id = DIM * 4 + 8 + 120
    cache = ServingCache(3 * per_id)
    cache.reset(1)
    cache.upsert("user", 1, ["a", "b", "c", "d", "e"], rows(1, 2, 3, 4, 5), 1)
    assert cache.held("user") == 3 and cache.full()
    cache.upsert("user", 1, ["a", "z"], rows(10, 11), 2)
    hits = cache.read("user", 1, ["a", "b", "c", "d", "z"])
    assert hits is not None
    assert hits.positions.tolist() == [0, 1, 2]
    assert hits.vectors[:, 0].tolist() == [10, 2, 3]


def test_discarded_rows_are_reused() -> None:
    cache = ServingCache(1 << 20)
    cache.reset(1)
    cache.upsert("user", 1, ["a", "b"], rows(1, 2), 1)
    cache.discard("user", 1, ["a"])
    cache.upsert("user", 1, ["c"], rows(3), 1)
    hits = cache.read("user", 1, ["a", "b", "c"])
    assert hits is not None
    assert hits.positions.tolist() == [1, 2]
    assert hits.vectors[:, 0].tolist() == [2, 3]
    assert cache.used_bytes == 2 * (DIM * 4 + 8 + 120)


def test_growth_keeps_earlier_rows() -> None:
    cache = ServingCache(64 << 20)
    cache.reset(1)
    ids = [f"u{n}" for n in range(5_000)]
    for start in range(0, 5_000, 700):
        chunk = ids[start : start + 700]
        cache.upsert("user", 1, chunk, rows(*range(start, start + len(chunk))), start)
    hits = cache.read("user", 1, ids)
    assert hits is not None
    assert hits.vectors[:, 0].tolist() == list(range(5_000))


# ----- inside the store (real RocksDB) -------------------------------------------------------


def random_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.standard_normal((count, DIM)).astype(np.float32)


def fill_store(store: VersionedVectorStore, rng: np.random.Generator, versions: tuple[int, ...]) -> None:
    for version in versions:
        for start in range(0, 300, 100):
            ids = [f"u{n}" for n in range(start, start + 100) if n % 7 or version == 1]
            writer = store.writer()
            writer.put_vectors("user", ids, version, random_rows(rng, len(ids)), 1_000 * version + start)
            writer.commit()


def assert_same_answers(cached: VersionedVectorStore, plain: VersionedVectorStore, ids: list[str]) -> None:
    for version in (None, 1, 2, 3):
        left, right = (
            resolve_matrix(cached, "user", ids, version),
            resolve_matrix(plain, "user", ids, version),
        )
        assert (left.version, left.ids, left.missing, left.updated_at_ms) == (
            right.version,
            right.ids,
            right.missing,
            right.updated_at_ms,
        )
        np.testing.assert_array_equal(left.vectors, right.vectors)
        many_left, many_right = (resolve_many(store, "user", ids, version) for store in (cached, plain))
        assert many_left[0] == many_right[0]
        for a, b in zip(many_left[1], many_right[1], strict=True):
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert (a.id, a.version, a.updated_at_ms, a.source) == (
                    b.id,
                    b.version,
                    b.updated_at_ms,
                    b.source,
                )
                np.testing.assert_array_equal(a.vector, b.vector)


@pytest.mark.parametrize("budget_mb", [64, 0.01])
@pytest.mark.parametrize("vector_dtype", ["float32", "float16"])
def test_cached_store_answers_exactly_as_rocksdb(tmp_path: Path, budget_mb: float, vector_dtype: str) -> None:
    """Same writes into a store with a cache and one without: every read agrees, whether the
    ids were warmed, written after, read through, or beyond a small budget."""
    stores = []
    for name, cache_mb in (("cached", budget_mb), ("plain", 0)):
        store = VersionedVectorStore(tmp_path / name, keep_versions=5, vector_dtype=vector_dtype)
        if cache_mb:
            store.serving_cache = ServingCache(int(cache_mb * (1 << 20)))
        stores.append(store)
    cached, plain = stores
    try:
        for store in stores:
            fill_store(store, np.random.default_rng(7), (1, 2))
            store.set_serving_version(2)
        warmed = cached.warm_serving_cache()
        assert 0 < warmed <= 300
        ids = [f"u{n}" for n in np.random.default_rng(1).integers(0, 320, 400)]
        assert_same_answers(cached, plain, ids)
        for store in stores:  # writes after warming, including a new serving version
            fill_store(store, np.random.default_rng(8), (2, 3))
        assert_same_answers(cached, plain, ids)
        for store in stores:
            store.set_serving_version(3)
        assert cached.serving_cache is not None and cached.serving_cache.held("user") == 0
        assert_same_answers(cached, plain, ids)  # reads through
        assert cached.serving_cache.held("user") > 0
        assert_same_answers(cached, plain, ids)  # from the cache
    finally:
        for store in stores:
            store.close()


def test_vectors_evicted_by_newer_versions_leave_the_cache(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db", keep_versions=1, serving_cache_mb=8)
    try:
        store.set_serving_version(1)
        writer = store.writer()
        writer.put_vectors("item", ["a", "b"], 1, rows(1, 2), 10)
        writer.commit()
        assert resolve_matrix(store, "item", ["a", "b"], None).ids == ["a", "b"]
        writer = store.writer()
        writer.put_vectors("item", ["a"], 2, rows(5), 20)  # keep 1: version 1 of "a" is evicted
        writer.commit()
        answer = resolve_matrix(store, "item", ["a", "b"], None)
        assert (answer.ids, answer.missing) == (["b"], ["a"])
    finally:
        store.close()


def test_warm_stops_when_asked(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db", serving_cache_mb=8)
    try:
        fill_store(store, np.random.default_rng(0), (1,))
        store.set_serving_version(1)
        stop = threading.Event()
        stop.set()
        assert store.warm_serving_cache(chunk=50, stop=stop) == 50
        assert store.warm_serving_cache() == 300
    finally:
        store.close()


def test_concurrent_reads_never_see_a_torn_or_foreign_row(tmp_path: Path) -> None:
    """A writer thread commits generations of constant rows at the serving version and at a
    staged one; readers must only ever see whole rows of the serving version."""
    store = VersionedVectorStore(tmp_path / "db", serving_cache_mb=8)
    ids = [f"u{n}" for n in range(200)]
    done = threading.Event()
    problems: list[str] = []
    try:
        store.set_serving_version(1)

        def write() -> None:
            for generation in range(1, 40):
                writer = store.writer()
                writer.put_vectors("user", ids, 1, np.full((200, DIM), generation, np.float32), generation)
                writer.put_vectors("user", ids, 2, np.full((200, DIM), -generation, np.float32), generation)
                writer.commit()
            done.set()

        def read() -> None:
            while not done.is_set():
                answer = resolve_matrix(store, "user", ids, None)
                if answer.version != 1:
                    problems.append(f"version {answer.version}")
                if not len(answer.ids):
                    continue
                first = answer.vectors[:, 0]
                whole = (answer.vectors == first[:, None]).all(axis=1)
                stamped = first == np.asarray(answer.updated_at_ms, dtype=np.float32)
                bad = np.flatnonzero(~whole | ~stamped | (first <= 0))
                problems.extend(f"row {answer.vectors[at].tolist()}" for at in bad[:3])

        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not problems, problems[:3]
        final = resolve_matrix(store, "user", ids, None)
        assert (final.vectors == 39).all()
    finally:
        store.close()
