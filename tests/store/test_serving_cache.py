"""The serving cache: alone, and inside a real RocksDB store (answers equal the store's)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from store.lookup import resolve_many, resolve_matrix
from store.options import StoreOptions
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
    assert not cache.fill("user", 2, ["a"], rows(8), np.array([1]), cache.epoch)
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
    epoch = cache.epoch  # the reader notes it, then reads RocksDB
    cache.upsert("item", 1, ["a"], rows(2), 200)  # the commit
    assert cache.fill("item", 1, ["a", "b"], rows(1, 5), np.array([100, 150]), epoch)  # the late reader
    hits = cache.read("item", 1, ["a", "b"])
    assert hits is not None
    assert hits.vectors[:, 0].tolist() == [2, 5]
    assert hits.updated_at_ms.tolist() == [200, 150]


def test_a_fill_read_before_a_discard_or_reset_is_dropped() -> None:
    """An eviction (or a version change) between a reader's RocksDB read and its fill: the
    value read may be gone from the store, so it must not enter the cache."""
    cache = ServingCache(1 << 20)
    cache.reset(1)
    epoch = cache.epoch
    cache.discard("user", 1, ["x"])  # x was not even held
    assert not cache.fill("user", 1, ["x"], rows(1), np.array([1]), epoch)
    epoch = cache.epoch
    cache.reset(2)
    cache.reset(1)
    assert not cache.fill("user", 1, ["x"], rows(1), np.array([1]), epoch)
    assert cache.read("user", 1, ["x"]).positions.tolist() == []  # type: ignore[union-attr]
    assert cache.fill("user", 1, ["x"], rows(1), np.array([1]), cache.epoch)
    assert cache.held("user") == 1


def test_a_write_of_another_dimension_drops_the_held_row() -> None:
    cache = ServingCache(1 << 20)
    cache.reset(1)
    cache.upsert("user", 1, ["a", "b"], rows(1, 2), 1)
    cache.upsert("user", 1, ["a"], np.ones((1, DIM + 2), np.float32), 2)
    hits = cache.read("user", 1, ["a", "b"])
    assert hits is not None and hits.positions.tolist() == [1]


def test_the_budget_bounds_allocated_rows_not_only_used_ones() -> None:
    per_id = DIM * 4 + 8 + 120
    cache = ServingCache(3_000 * per_id)
    cache.reset(1)
    ids = [f"u{n}" for n in range(5_000)]
    cache.upsert("user", 1, ids, np.zeros((5_000, DIM), np.float32), 1)
    assert cache.held("user") == 3_000
    assert cache.allocated_bytes <= cache.budget_bytes
    assert cache.full()


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


def test_a_fill_naming_an_id_twice_holds_it_once() -> None:
    cache = ServingCache(1 << 20)
    cache.reset(1)
    missed = cache.read("user", 1, ["a", "b", "a"])
    assert missed is not None and not len(missed.positions)
    assert cache.fill("user", 1, ["a", "b", "a"], rows(1, 2, 1), np.array([5, 6, 5]), missed.epoch)
    hits = cache.read("user", 1, ["a", "b"])
    assert hits is not None
    assert hits.vectors[:, 0].tolist() == [1, 2]
    assert hits.updated_at_ms.tolist() == [5, 6]
    assert cache.used_bytes == 2 * (DIM * 4 + 8 + 120)


def test_new_ids_beyond_the_budget_are_left_out_and_freed_rows_go_first() -> None:
    per_id = DIM * 4 + 8 + 120
    cache = ServingCache(1_024 * per_id)  # room for the first allocation only
    cache.reset(1)
    ids = [f"u{n}" for n in range(1_500)]
    cache.upsert("user", 1, ids, rows(*range(1_500)), 1)
    held = cache.read("user", 1, ids)
    assert held is not None and held.positions.tolist() == list(range(1_024))
    cache.discard("user", 1, ids[:10])
    cache.upsert("user", 1, ["x", "y"], rows(-1, -2), 2)  # into two freed rows
    hits = cache.read("user", 1, ["x", "y", ids[10], ids[1_100]])
    assert hits is not None
    assert hits.positions.tolist() == [0, 1, 2]
    assert hits.vectors[:, 0].tolist() == [-1, -2, 10]


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
        store = VersionedVectorStore(
            tmp_path / name, StoreOptions(keep_versions=5, vector_dtype=vector_dtype)
        )
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
    store = VersionedVectorStore(tmp_path / "db", StoreOptions(keep_versions=1, serving_cache_mb=8))
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
    store = VersionedVectorStore(tmp_path / "db", StoreOptions(serving_cache_mb=8))
    try:
        fill_store(store, np.random.default_rng(0), (1,))
        store.set_serving_version(1)
        stop = threading.Event()
        assert store.serving_cache is not None
        original_fill = store.serving_cache.fill

        def fill_then_stop(*args: object) -> bool:
            stop.set()  # asked to stop while the first chunk is being copied
            return original_fill(*args)  # type: ignore[arg-type]

        store.serving_cache.fill = fill_then_stop  # type: ignore[method-assign]
        assert store.warm_serving_cache(chunk=50, stop=stop) == 50
        store.serving_cache.fill = original_fill  # type: ignore[method-assign]
        assert store.warm_serving_cache() == 300
    finally:
        store.close()


def test_concurrent_reads_never_see_a_torn_or_foreign_row(tmp_path: Path) -> None:
    """A writer thread commits generations of constant rows at the serving version and at a
    staged one; readers must only ever see whole rows of the serving version."""
    store = VersionedVectorStore(tmp_path / "db", StoreOptions(serving_cache_mb=8))
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
            assert not thread.is_alive()
        assert not problems, problems[:3]
        final = resolve_matrix(store, "user", ids, None)
        assert (final.vectors == 39).all()
    finally:
        store.close()


def commit(store: VersionedVectorStore, ids: list[str], version: int, vectors: np.ndarray, at: int) -> None:
    writer = store.writer()
    writer.put_vectors("user", ids, version, vectors, at)
    writer.commit()


def test_a_read_racing_an_eviction_does_not_bring_the_evicted_vector_back(tmp_path: Path) -> None:
    """Reader misses x and reads x@1 from RocksDB; a commit of x@2 evicts x@1 (keep 1);
    then the reader fills. Afterwards the cache must answer as RocksDB does: x lacks v1."""
    store = VersionedVectorStore(tmp_path / "db", StoreOptions(keep_versions=1, serving_cache_mb=8))
    try:
        commit(store, ["x"], 1, rows(1), 10)
        store.set_serving_version(1)  # an empty cache: x is read through
        read = store.get_raw_records

        def read_then_evict(kind: str, ids: list[str]) -> list[bytes | None]:
            raw = read(kind, ids)
            store.get_raw_records = read  # type: ignore[method-assign]
            commit(store, ["x"], 2, rows(2), 20)  # the writer thread, in between
            return raw

        store.get_raw_records = read_then_evict  # type: ignore[method-assign]
        assert resolve_matrix(store, "user", ["x"], None).ids == ["x"]  # what it read, then
        assert resolve_matrix(store, "user", ["x"], None).missing == ["x"]  # and from now on
    finally:
        store.close()


def test_a_warm_scan_racing_an_eviction_reads_its_chunk_again(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db", StoreOptions(keep_versions=1, serving_cache_mb=8))
    try:
        store.set_serving_version(1)
        commit(store, ["w", "x"], 1, rows(1, 1), 10)
        assert store.serving_cache is not None
        store.serving_cache.reset(1)  # forget the commit's upsert: the scan must find them
        original_fill = store.serving_cache.fill
        calls = []

        def evict_then_fill(*args: object) -> bool:
            if not calls:
                commit(store, ["x"], 2, rows(2), 20)  # evicts x@1 after the chunk was read
            calls.append(args)
            return original_fill(*args)  # type: ignore[arg-type]

        store.serving_cache.fill = evict_then_fill  # type: ignore[method-assign]
        assert store.warm_serving_cache(kinds=("user",)) == 1
        assert len(calls) == 2  # refused once, read again
        answer = resolve_matrix(store, "user", ["w", "x"], None)
        assert (answer.ids, answer.missing) == (["w"], ["x"])
    finally:
        store.close()


def test_a_promote_and_rollback_during_a_read_leave_no_stale_row(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db", StoreOptions(serving_cache_mb=8))
    try:
        commit(store, ["x"], 1, rows(1), 10)
        store.set_serving_version(1)
        assert store.serving_cache is not None
        store.serving_cache.reset(1)
        read = store.get_raw_records

        def read_then_write_and_flip(kind: str, ids: list[str]) -> list[bytes | None]:
            raw = read(kind, ids)
            store.get_raw_records = read  # type: ignore[method-assign]
            commit(store, ["x"], 1, rows(5), 50)
            store.set_serving_version(2)
            store.set_serving_version(1)
            return raw

        store.get_raw_records = read_then_write_and_flip  # type: ignore[method-assign]
        resolve_matrix(store, "user", ["x"], None)
        assert resolve_matrix(store, "user", ["x"], None).vectors[0, 0] == 5
    finally:
        store.close()


def test_rows_of_two_dimensions_in_one_version_answer_as_without_the_cache(tmp_path: Path) -> None:
    answers = []
    for cache_mb in (0, 8):
        store = VersionedVectorStore(tmp_path / str(cache_mb), StoreOptions(serving_cache_mb=cache_mb))
        try:
            store.set_serving_version(1)
            commit(store, ["a"], 1, np.ones((1, 4), np.float32), 1)
            commit(store, ["b"], 1, np.ones((1, 6), np.float32), 1)
            answers.append([r.vector.shape for r in resolve_many(store, "user", ["a", "b"], None)[1] if r])
        finally:
            store.close()
    assert answers == [[(4,), (6,)], [(4,), (6,)]]
