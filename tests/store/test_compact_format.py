"""Record format 2 (compact) next to format 1, and the float16 storage mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from store import (
    COMPACT_RECORD_FORMAT,
    RecordFormatError,
    VersionedVector,
    VersionedVectorStore,
    decode_record,
    encode_record,
    entity_key,
    lookup_one,
    resolve_many,
    upsert_entry,
)
from store.options import StoreOptions
from store.record import record_format_of, upsert_record

NOW_MS = 1_767_225_600_123


def _entry(version: int, seed: int = 0, dim: int = 8, dtype: str = "float32") -> VersionedVector:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(dtype)
    return VersionedVector(version, NOW_MS + version, vector)


def _vectors(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype("float32")


def test_format_2_round_trips_mixed_versions_dims_and_dtypes() -> None:
    entries = [_entry(2**32 - 1, dim=64), _entry(300, seed=1, dim=32), _entry(1, seed=2, dtype="float16")]
    record = encode_record(entries, COMPACT_RECORD_FORMAT)
    assert record_format_of(record) == COMPACT_RECORD_FORMAT
    decoded = decode_record(record)
    assert [(e.version, e.updated_at_ms, e.dim, e.vector.dtype) for e in decoded] == [
        (e.version, e.updated_at_ms, e.dim, e.vector.dtype) for e in entries
    ]
    for original, back in zip(entries, decoded, strict=True):
        np.testing.assert_array_equal(back.vector, original.vector)


def test_format_2_costs_ten_bytes_for_one_version_below_128() -> None:
    record = encode_record([_entry(1, dim=64)], COMPACT_RECORD_FORMAT)
    assert len(record) == 1 + 9 + 64 * 4


def test_a_format_1_record_upserted_in_format_2_keeps_its_entries() -> None:
    old = encode_record([_entry(3, dim=16), _entry(1, seed=1, dim=16, dtype="float16")])
    new = _entry(2, seed=5, dim=16)
    record, added, evicted = upsert_record(old, 2, new.updated_at_ms, new.vector, 5, COMPACT_RECORD_FORMAT)
    assert added and evicted == []
    assert record_format_of(record) == COMPACT_RECORD_FORMAT
    expected = [_entry(3, dim=16), new, _entry(1, seed=1, dim=16, dtype="float16")]
    assert record == encode_record(expected, COMPACT_RECORD_FORMAT)


@pytest.mark.parametrize("keep", [1, 2, 4])
@pytest.mark.parametrize("ascending", [False, True])
def test_format_2_upsert_on_bytes_matches_upsert_on_entries(keep: int, ascending: bool) -> None:
    rng = np.random.default_rng(7 + keep)
    raw: bytes | None = None
    entries: list[VersionedVector] = []
    for step in range(60):
        if ascending:  # as versions are rolled out: mostly the newest again, sometimes the next
            version = 1 + step // 4 if rng.random() < 0.9 else int(rng.integers(1, 1 + step // 4 + 1))
        else:
            version = int(rng.choice([1, 2, 3, 127, 128, 20_000, 2**31]))
        dtype = "float16" if step % 3 == 0 else "float32"
        new = _entry(version, seed=step, dim=int(rng.integers(1, 20)), dtype=dtype)
        entries, added, evicted = upsert_entry(entries, new, keep=keep)
        raw, raw_added, raw_evicted = upsert_record(
            raw, new.version, new.updated_at_ms, new.vector, keep, COMPACT_RECORD_FORMAT
        )
        assert (raw_added, raw_evicted) == (added, evicted)
        assert raw == encode_record(entries, COMPACT_RECORD_FORMAT)


@pytest.mark.parametrize("cut", [1, 2, 5, 9, 20])
def test_truncated_format_2_records_raise_a_format_error(cut: int) -> None:
    record = encode_record([_entry(200, dim=8)], COMPACT_RECORD_FORMAT)
    with pytest.raises(RecordFormatError):
        decode_record(record[:-cut])


def test_format_2_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(RecordFormatError, match="48 bits"):
        encode_record([VersionedVector(1, 1 << 48, np.zeros(4, "float32"))], COMPACT_RECORD_FORMAT)
    with pytest.raises(RecordFormatError, match="dimensions"):
        encode_record([VersionedVector(1, 0, np.zeros(1 << 15, "float32"))], COMPACT_RECORD_FORMAT)
    with pytest.raises(RecordFormatError, match="cannot write record format"):
        encode_record([_entry(1)], 3)


def test_the_store_reads_format_1_records_and_rewrites_them_in_format_2(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db")
    legacy = encode_record([_entry(1, dim=16)])
    store._cf["vectors"][entity_key("user", "old")] = legacy  # as an earlier release wrote it
    assert lookup_one(store, "user", "old", 1).updated_at_ms == NOW_MS + 1
    writer = store.writer()
    writer.put_vectors("user", ["old"], 2, _vectors(1), NOW_MS)
    writer.commit()
    record = store._cf["vectors"][entity_key("user", "old")]
    assert record_format_of(record) == COMPACT_RECORD_FORMAT
    assert [e.version for e in store.get_record("user", "old")] == [2, 1]
    np.testing.assert_array_equal(store.get_record("user", "old")[1].vector, _entry(1, dim=16).vector)
    store.close()


def test_a_float16_store_writes_float16_and_serves_float32(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db", StoreOptions(vector_dtype="float16"))
    vectors = _vectors(3)
    writer = store.writer()
    writer.put_vectors("item", ["a", "b", "c"], 1, vectors, NOW_MS)
    writer.commit()
    stored = store.get_record("item", "b")
    assert stored is not None and stored[0].vector.dtype == np.float16
    served = lookup_one(store, "item", "b", 1)
    assert served is not None and served.vector.dtype == np.float32
    np.testing.assert_allclose(served.vector, vectors[1], atol=1e-3, rtol=1e-3)
    store.close()


def test_float32_and_float16_records_coexist_and_both_read(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db")
    writer = store.writer()
    writer.put_vectors("user", ["kept", "both"], 1, _vectors(2, seed=1), NOW_MS)
    writer.commit()
    store.close()
    store = VersionedVectorStore(tmp_path / "db", StoreOptions(vector_dtype="float16"))
    writer = store.writer()
    writer.put_vectors("user", ["both", "new"], 2, _vectors(2, seed=2), NOW_MS)  # as fresh as v1
    writer.commit()
    assert [e.vector.dtype for e in store.get_record("user", "both")] == [np.float16, np.float32]
    assert store.get_record("user", "kept")[0].vector.dtype == np.float32
    np.testing.assert_array_equal(store.get_record("user", "kept")[0].vector, _vectors(2, seed=1)[0])
    store.set_serving_version(2)
    answered, resolved = resolve_many(store, "user", ["both", "new", "kept"], 1, lambda s, t: lambda r: r * 2)
    assert answered == 1 and [r.source if r else None for r in resolved] == ["native", "aligned", "native"]
    assert all(r is not None and r.vector.dtype == np.float32 for r in resolved)
    np.testing.assert_allclose(resolved[1].vector, _vectors(2, seed=2)[1] * 2, atol=2e-3)
    store.close()


def test_compaction_and_sst_sizes_per_column_family(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db")
    writer = store.writer()
    writer.put_vectors("user", [f"u{i}" for i in range(500)], 1, _vectors(500, dim=64), NOW_MS)
    writer.put_state("user", "u1", b"state")
    writer.commit()
    store.compact()
    sizes = store.sst_bytes()
    assert set(sizes) == {"default", "vectors", "state", "offsets"}
    assert 500 * 256 < sizes["vectors"] < 500 * 256 * 1.2
    store.close()


def test_an_unknown_vector_dtype_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vector_dtype"):
        VersionedVectorStore(tmp_path / "db", StoreOptions(vector_dtype="float64"))


def test_the_block_cache_size_is_an_open_option(tmp_path) -> None:
    for cache_mb in (0, 1):
        store = VersionedVectorStore(tmp_path / f"db{cache_mb}", StoreOptions(block_cache_mb=cache_mb))
        writer = store.writer()
        writer.put_vectors("user", ["a"], 1, np.ones((1, 4), dtype=np.float32), 5)
        writer.commit()
        assert store.get_record("user", "a")[0].vector.tolist() == [1.0] * 4
        store.close()
    with pytest.raises(ValueError, match="block_cache_mb"):
        VersionedVectorStore(tmp_path / "bad", StoreOptions(block_cache_mb=-1))


def test_a_smaller_cap_applies_on_the_next_write() -> None:
    raw: bytes | None = None
    entries: list[VersionedVector] = []
    for version in (1, 2, 3, 4):
        new = _entry(version, seed=version, dim=3, dtype="float32")
        entries, _, _ = upsert_entry(entries, new, keep=4)
        raw, _, _ = upsert_record(raw, version, new.updated_at_ms, new.vector, 4, COMPACT_RECORD_FORMAT)
    for version in (4, 5):  # replacing the newest, then a newer one, with the cap down to 2
        new = _entry(version, seed=10 + version, dim=3, dtype="float32")
        entries, added, evicted = upsert_entry(entries, new, keep=2)
        raw, raw_added, raw_evicted = upsert_record(
            raw, version, new.updated_at_ms, new.vector, 2, COMPACT_RECORD_FORMAT
        )
        assert (raw_added, raw_evicted) == (added, evicted) and evicted
        assert raw == encode_record(entries, COMPACT_RECORD_FORMAT)
