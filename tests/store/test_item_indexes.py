"""Per-version item indexes on a real RocksDB store: built from it, fed by its commits, bounded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from store.item_index import IndexTuning
from store.item_indexes import ItemIndexes
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore

DIM = 8


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write(store: VersionedVectorStore, kind: str, version: int, ids: list[str], vectors: np.ndarray) -> None:
    writer = store.writer()
    writer.put_vectors(kind, ids, version, vectors, updated_at_ms=1)
    writer.commit()


def wait_built(indexes: ItemIndexes, version: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while indexes.index(version) is None:
        assert time.monotonic() < deadline, indexes.status()
        time.sleep(0.02)


@pytest.fixture
def store(tmp_path: Path) -> VersionedVectorStore:
    opened = VersionedVectorStore(tmp_path / "db", StoreOptions(keep_versions=2))
    yield opened
    opened.close()


def test_an_index_is_built_from_the_store_then_fed_by_commits(store: VersionedVectorStore) -> None:
    ids = [f"i{n}" for n in range(2_500)]
    stored = unit_rows(2_500, seed=1)
    write(store, "item", 1, ids, stored)
    write(store, "user", 1, ["u1"], unit_rows(1, seed=2))  # users are never indexed
    progress: list[tuple[int, int, int]] = []
    indexes = ItemIndexes(
        store, dim_of=lambda v: DIM, build_chunk=1_000, on_build_progress=lambda *p: progress.append(p)
    )
    indexes.track(serving=1)
    assert indexes.index(1) is None and indexes.status()[1].building
    indexes.start()
    try:
        wait_built(indexes, 1)
        index = indexes.index(1)
        assert index is not None and len(index) == 2_500 and "u1" not in index
        assert progress[-1] == (1, 2_500, 2_500) and len(progress) == 3
        newer = unit_rows(1, seed=3)
        write(store, "item", 1, ["i5", "new"], np.vstack([newer, newer]))
        found = index.search(newer[0], 2)
        assert sorted(found.ids) == ["i5", "new"]
        assert found.scores == pytest.approx([1.0, 1.0], abs=1e-5)
        write(store, "item", 2, ["i5"], unit_rows(1, seed=4))  # another version: not in index 1
        assert len(index) == 2_501
        status = indexes.status()[1]
        assert not status.building and status.items == 2_501
    finally:
        indexes.stop()


def test_an_empty_store_builds_an_empty_index_and_says_so(store: VersionedVectorStore) -> None:
    progress: list[tuple[int, int, int]] = []
    indexes = ItemIndexes(store, dim_of=lambda v: DIM, on_build_progress=lambda *p: progress.append(p))
    indexes.track(serving=1)
    indexes.start()
    try:
        wait_built(indexes, 1)
        assert progress == [(1, 0, 0)] and indexes.status()[1].ready
    finally:
        indexes.stop()


def test_evicted_vectors_leave_the_index(store: VersionedVectorStore) -> None:
    write(store, "item", 1, ["a", "b"], unit_rows(2, seed=1))
    indexes = ItemIndexes(store, dim_of=lambda v: DIM, keep=3)
    indexes.track(serving=1)
    indexes.start()
    try:
        wait_built(indexes, 1)
        index = indexes.index(1)
        assert index is not None
        # keep_versions=2: writing versions 2 and 3 of "a" evicts its version 1
        write(store, "item", 2, ["a"], unit_rows(1, seed=2))
        write(store, "item", 3, ["a"], unit_rows(1, seed=3))
        assert "a" not in index and "b" in index
        assert index.search(unit_rows(1, seed=1)[0], 5).ids == ["b"]
    finally:
        indexes.stop()


def test_writes_during_a_build_are_never_undone_by_it(store: VersionedVectorStore) -> None:
    ids = [f"i{n}" for n in range(3_000)]
    write(store, "item", 1, ids, unit_rows(3_000, seed=1))
    indexes = ItemIndexes(store, dim_of=lambda v: DIM, build_chunk=200)
    indexes.track(serving=1)
    target = unit_rows(1, seed=9)
    indexes.start()
    try:
        # written while the builder scans: some before it reaches them, some after
        for n in range(0, 3_000, 300):
            write(store, "item", 1, [f"i{n}"], target)
        wait_built(indexes, 1)
        index = indexes.index(1)
        assert index is not None and len(index) == 3_000
        found = index.search(target[0], 10)
        assert sorted(found.ids) == sorted(f"i{n}" for n in range(0, 3_000, 300))
        assert min(found.scores) == pytest.approx(1.0, abs=1e-5)
    finally:
        indexes.stop()


def test_keep_bounds_the_versions_with_an_index(store: VersionedVectorStore) -> None:
    for version in (1, 2, 3):
        write(store, "item", version, [f"v{version}"], unit_rows(1, seed=version))
    indexes = ItemIndexes(store, dim_of=lambda v: DIM, keep=2)
    indexes.track(serving=3)
    assert indexes.versions == [2, 3]  # the serving version, then the newest older one
    indexes.track(serving=3, staged=4)
    assert indexes.versions == [3, 4]  # serving and staged always; nothing older fits
    indexes.track(serving=4)
    assert indexes.versions == [3, 4]
    one = ItemIndexes(store, dim_of=lambda v: DIM, keep=1)
    one.track(serving=3, staged=4)
    assert one.versions == [3, 4]


def test_ready_needs_the_graph_to_hold_the_items(store: VersionedVectorStore) -> None:
    tuning = IndexTuning(merge_chunk=100, merge_rows=100_000, merge_after_s=3600)
    indexes = ItemIndexes(store, dim_of=lambda v: DIM, tuning=tuning)
    indexes.track(serving=1)
    indexes.start()
    try:
        wait_built(indexes, 1)
        write(store, "item", 1, [f"i{n}" for n in range(500)], unit_rows(500, seed=1))
        status = indexes.status()[1]
        assert status.fresh_items == 500 and not status.ready
        index = indexes.index(1)
        assert index is not None
        index.merge_all()
        assert indexes.status()[1].ready
    finally:
        indexes.stop()


def test_an_older_version_no_longer_written_is_fed_serving_vectors_carried_back(
    store: VersionedVectorStore,
) -> None:
    """Version 1 is indexed but no longer written (not serving, staged or retained): its
    stale items are built from carried serving vectors, and refreshes of the serving version
    reach it carried back, as a read at version 1 resolves them."""
    writer = store.writer()
    writer.put_vectors("item", ["fresh", "stale"], 1, unit_rows(2, seed=1), updated_at_ms=5)
    writer.put_vectors("item", ["fresh"], 2, unit_rows(1, seed=2), updated_at_ms=5)
    writer.put_vectors("item", ["stale"], 2, unit_rows(1, seed=3), updated_at_ms=9)  # refreshed after
    writer.commit()
    store.set_serving_version(2)

    def carry(source: int, target: int):  # type: ignore[no-untyped-def]
        assert (source, target) == (2, 1)
        return lambda rows: -rows

    indexes = ItemIndexes(store, dim_of=lambda v: DIM, keep=2, carry=carry)
    indexes.track(serving=2, fresh=())
    indexes.start()
    try:
        wait_built(indexes, 1)
        index = indexes.index(1)
        assert index is not None
        stale_query = -unit_rows(1, seed=3)[0]  # the carried serving vector of "stale"
        assert index.search(stale_query, 1).ids == ["stale"]
        assert index.search(unit_rows(2, seed=1)[0], 1).ids == ["fresh"]  # native, as fresh
        new = unit_rows(1, seed=4)
        write(store, "item", 2, ["fresh"], new)  # a refresh at the serving version only
        assert index.search(-new[0], 1).ids == ["fresh"]
        assert indexes.index(2) is not None and indexes.index(2).search(new[0], 1).ids == ["fresh"]
        # Retained (still written natively), version 1 takes no carried vectors.
        indexes.track(serving=2, fresh=(1,))
        write(store, "item", 2, ["fresh"], unit_rows(1, seed=5))
        assert index.search(-new[0], 1).ids == ["fresh"]  # unchanged
    finally:
        indexes.stop()
