"""The store on real RocksDB files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from store import StoreOpenError, VersionedVectorStore, VersionNotFoundError, lookup_many, lookup_one
from store.options import StoreOptions


def _vectors(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, dim)).astype("float32")


@pytest.fixture
def store(tmp_path: Path):
    opened = VersionedVectorStore(tmp_path / "db", StoreOptions(keep_versions=3))
    yield opened
    opened.close()


def test_vectors_state_and_offsets_commit_together_and_survive_reopen(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db")
    writer = store.writer()
    writer.put_state("user", "alice", b"state-bytes")
    writer.put_vectors("user", ["alice", "bob"], 1, _vectors(2), 1000)
    writer.set_offset("interactions", 2, 41)
    assert store.get_record("user", "alice") is None  # nothing visible before commit
    writer.commit()
    store.close()
    reopened = VersionedVectorStore(tmp_path / "db")
    assert reopened.get_states("user", ["alice", "zed"]) == [b"state-bytes", None]
    assert reopened.get_offset("interactions", 2) == 41
    assert reopened.get_offset("interactions", 3) is None
    np.testing.assert_array_equal(reopened.get_record("user", "bob")[0].vector, _vectors(2)[1])
    assert reopened.version_counts()["user"] == {1: 2}
    reopened.close()


def test_counts_follow_additions_replacements_and_evictions(store: VersionedVectorStore) -> None:
    for version in (1, 2, 3, 3, 4):
        writer = store.writer()
        writer.put_vectors("item", ["a", "b"], version, _vectors(2, seed=version), version * 10)
        writer.commit()
    assert store.version_counts()["item"] == {2: 2, 3: 2, 4: 2}
    assert [e.version for e in store.get_record("item", "a")] == [4, 3, 2]


def test_two_versions_in_one_batch_both_land(store: VersionedVectorStore) -> None:
    writer = store.writer()
    writer.put_vectors("user", ["x"], 1, _vectors(1, seed=1), 5)
    writer.put_vectors("user", ["x"], 2, _vectors(1, dim=8, seed=2), 5)
    writer.commit()
    assert [(e.version, e.dim) for e in store.get_record("user", "x")] == [(2, 8), (1, 16)]
    assert store.version_counts()["user"] == {1: 1, 2: 1}


def test_lookup_resolves_exactly_the_asked_version(store: VersionedVectorStore) -> None:
    writer = store.writer()
    writer.put_vectors("user", ["u"], 1, _vectors(1, seed=1), 5)
    writer.put_vectors("user", ["u"], 2, _vectors(1, seed=2), 6)
    writer.commit()
    assert lookup_one(store, "user", "u", 1).updated_at_ms == 5
    assert lookup_one(store, "user", "ghost", 1) is None
    with pytest.raises(VersionNotFoundError):
        lookup_one(store, "user", "u", 3)
    many = lookup_many(store, "user", ["u", "ghost"], 2)
    assert many[0].version == 2 and many[1] is None


def test_serving_version_outbox_and_incarnation(store: VersionedVectorStore) -> None:
    assert store.serving_version is None
    store.set_serving_version(3)
    assert store.serving_version == 3
    writer = store.writer()
    writer.set_offset("t", 0, 10)
    writer.set_outbox(b"pending")
    writer.commit()
    assert store.pending_outbox() == b"pending"
    store.clear_outbox()
    assert store.pending_outbox() is None
    assert store.ensure_broker_incarnation("one") is False
    assert store.get_offset("t", 0) is None  # first incarnation: nothing to keep
    writer = store.writer()
    writer.set_offset("t", 0, 10)
    writer.commit()
    assert store.ensure_broker_incarnation("one") is False and store.get_offset("t", 0) == 10
    assert store.ensure_broker_incarnation("two") is True and store.get_offset("t", 0) is None


def test_a_locked_store_gives_a_clear_error(store: VersionedVectorStore) -> None:
    with pytest.raises(StoreOpenError, match="in use by another process"):
        VersionedVectorStore(store.path)


def test_iter_states_lists_one_kind(store: VersionedVectorStore) -> None:
    writer = store.writer()
    writer.put_state("user", "b", b"2")
    writer.put_state("user", "a", b"1")
    writer.put_state("item", "a", b"3")
    writer.commit()
    assert list(store.iter_states("user")) == [("a", b"1"), ("b", b"2")]
    assert list(store.iter_states("item")) == [("a", b"3")]


def test_resolve_carries_the_serving_vector_back_when_the_old_one_is_gone(
    store: VersionedVectorStore,
) -> None:
    from store import NoServingVersionError, VersionUnreachableError, resolve_many

    with pytest.raises(NoServingVersionError):
        resolve_many(store, "user", ["a"], None)
    writer = store.writer()
    writer.put_vectors("user", ["old"], 1, _vectors(1, seed=1), 5)
    versions_2 = _vectors(2, seed=2)
    writer.put_vectors("user", ["old"], 2, versions_2[:1], 5)  # as fresh as its version 1
    writer.put_vectors("user", ["new"], 2, versions_2[1:], 6)
    writer.commit()
    store.set_serving_version(2)
    calls = []

    def carry(source: int, target: int):
        calls.append((source, target))
        return lambda rows: rows[:, :4] * 10

    answered, (old, new, ghost) = resolve_many(store, "user", ["old", "new", "ghost"], 1, carry)
    assert answered == 1 and ghost is None
    assert old.source == "native" and old.updated_at_ms == 5
    assert new.source == "aligned" and new.version == 1 and new.vector.shape == (4,)
    np.testing.assert_allclose(new.vector, _vectors(2, seed=2)[1][:4] * 10)
    assert calls == [(2, 1)]  # one chain for the whole batch
    answered, (served, _, _) = resolve_many(store, "user", ["old", "new", "ghost"], None, carry)
    assert answered == 2 and served.version == 2
    assert resolve_many(store, "user", ["new"], 3, carry)[1] == [None]  # newer: never carried

    def unreachable(source: int, target: int):
        raise VersionUnreachableError("no chain")

    with pytest.raises(VersionUnreachableError):
        resolve_many(store, "user", ["new"], 1, unreachable)


def test_a_native_entry_older_than_the_serving_one_is_never_served(store: VersionedVectorStore) -> None:
    """A version no longer written keeps the vector of an old state: a read at it gets the
    fresh serving vector carried back instead, with the serving entry's time."""
    from store import resolve_many, resolve_matrix

    writer = store.writer()
    writer.put_vectors("user", ["stale", "fresh"], 1, _vectors(2, seed=1), 5)
    writer.put_vectors("user", ["stale"], 2, _vectors(1, seed=2), 9)  # refreshed after v1 stopped
    writer.put_vectors("user", ["fresh"], 2, _vectors(1, seed=3), 5)
    writer.commit()
    store.set_serving_version(2)

    def carry(source: int, target: int):
        return lambda rows: rows * -1

    _, (stale, fresh) = resolve_many(store, "user", ["stale", "fresh"], 1, carry)
    assert stale.source == "aligned" and stale.updated_at_ms == 9
    np.testing.assert_allclose(stale.vector, -_vectors(1, seed=2)[0])
    assert fresh.source == "native" and fresh.updated_at_ms == 5
    matrix = resolve_matrix(store, "user", ["stale", "fresh"], 1, carry)
    assert matrix.sources == ["aligned", "native"] and matrix.updated_at_ms == [9, 5]
    _, (exact, _) = resolve_many(store, "user", ["stale", "fresh"], 1)  # no carry: exact version
    assert exact.source == "native" and exact.updated_at_ms == 5


def test_a_range_read_of_records_writes_what_a_multi_get_writes(tmp_path: Path) -> None:
    """Backfill's path (records of a key range handed to put_vectors) and the default path
    (a multi-get) leave byte-identical records, old versions kept, new ids created."""
    rng = np.random.default_rng(3)
    ids = [f"u{n:03d}" for n in range(50)]
    first = rng.standard_normal((50, 4)).astype(np.float32)
    second = rng.standard_normal((60, 4)).astype(np.float32)
    new_ids = ids + [f"u{n:03d}" for n in range(50, 60)]
    records = []
    for use_range in (False, True):
        store = VersionedVectorStore(tmp_path / str(use_range), StoreOptions(keep_versions=2))
        try:
            writer = store.writer()
            writer.put_vectors("user", ids, 1, first, 10)
            writer.put_vectors("item", ["u001"], 1, first[:1], 10)  # another kind, inside the range
            writer.commit()
            stored = store.scan_raw_records("user", new_ids[0], new_ids[-1]) if use_range else None
            if stored is not None:
                assert len(stored) == 50  # the item record is not in the user range
            writer = store.writer()
            writer.put_vectors("user", new_ids, 2, second, 20, stored)
            writer.commit()
            records.append(store.get_raw_records("user", new_ids))
            assert store.version_counts()["user"] == {1: 50, 2: 60}
        finally:
            store.close()
    assert records[0] == records[1]
