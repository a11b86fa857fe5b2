"""Reading one entry of a record agrees with decoding the whole record, and batch reads agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from store.errors import VersionNotFoundError
from store.lookup import resolve_many, resolve_matrix
from store.record import (
    COMPACT_RECORD_FORMAT,
    RECORD_FORMAT,
    RecordFormatError,
    VersionedVector,
    decode_record,
    encode_record,
)
from store.record_scan import locate_entry, span_vector
from store.vector_store import VersionedVectorStore


def _entry(version: int, dim: int, dtype: str) -> VersionedVector:
    vector = np.arange(dim, dtype=np.float64).astype(dtype) + version
    return VersionedVector(version, 1_000 * version, vector)


@pytest.mark.parametrize("record_format", [RECORD_FORMAT, COMPACT_RECORD_FORMAT])
def test_locate_entry_finds_each_version_as_decode_record_does(record_format: int) -> None:
    entries = [_entry(300, 3, "<f4"), _entry(5, 3, "<f4"), _entry(4, 8, "<f2"), _entry(2, 64, "<f4")]
    record = encode_record(entries, record_format=record_format)
    for entry in decode_record(record):
        span = locate_entry(record, entry.version)
        assert span is not None and span.updated_at_ms == entry.updated_at_ms
        found = span_vector(record, span)
        assert found.dtype == entry.vector.dtype and np.array_equal(found, entry.vector)
    assert locate_entry(record, 3) is None


@pytest.mark.parametrize("record_format", [RECORD_FORMAT, COMPACT_RECORD_FORMAT])
def test_locate_entry_rejects_broken_records(record_format: int) -> None:
    record = encode_record([_entry(1, 4, "<f4")], record_format=record_format)
    for broken in (b"EV", b"XX\x01\x01", record[:-1], record[:8]):
        with pytest.raises(RecordFormatError):
            locate_entry(broken, 1)


def test_resolve_matrix_matches_resolve_many_including_float16_rows(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db")
    try:
        writer = store.writer()
        writer.put_vectors("item", ["a", "b"], 1, np.ones((2, 4), dtype=np.float16), 10)
        writer.put_vectors("item", ["c"], 1, np.full((1, 4), 0.5, dtype=np.float32), 20)
        writer.put_vectors("item", ["a"], 2, np.zeros((1, 4), dtype=np.float32), 30)
        writer.commit()
        store.set_serving_version(1)
        ids = ["c", "zz", "a", "b"]
        version, rows = resolve_many(store, "item", ids, None)
        matrix = resolve_matrix(store, "item", ids, None)
        assert version == matrix.version == 1
        assert rows[2] is not None and rows[2].vector.dtype == np.float32  # served as float32
        assert matrix.ids == ["c", "a", "b"] and matrix.missing == ["zz"] and matrix.all_native
        assert matrix.updated_at_ms == [20, 10, 10] and matrix.vectors.dtype == np.float32
        expected = np.stack([row.vector.astype(np.float32) for row in rows if row is not None])
        assert np.array_equal(matrix.vectors, expected)
        with pytest.raises(VersionNotFoundError):
            from store.lookup import lookup_one

            lookup_one(store, "item", "c", 2)
    finally:
        store.close()


@pytest.mark.parametrize("dim", [64, 128, 256])
@pytest.mark.parametrize("newest", [127, 130, 200, 328])
def test_versions_past_one_varint_byte_are_located_exactly(newest: int, dim: int) -> None:
    """A version of 128 or more takes two varint bytes: its first byte must never be
    mistaken for a one-byte version (200 is stored as C8 01, and 0xC8 == 200)."""
    entries = [
        VersionedVector(newest, 1_800_000_000_000, np.full(dim, 1.5, dtype=np.float32)),
        VersionedVector(3, 1_700_000_000_000, np.full(dim, 2.5, dtype=np.float32)),
    ]
    record = encode_record(entries, record_format=COMPACT_RECORD_FORMAT)
    for entry in decode_record(record):
        span = locate_entry(record, entry.version)
        assert span is not None and span.updated_at_ms == entry.updated_at_ms
        assert np.array_equal(span_vector(record, span), entry.vector)
    for absent in (200, 72, 128 + 72):
        if absent not in (newest, 3):
            assert locate_entry(record, absent) is None
