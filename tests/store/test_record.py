from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.record import RecordFormatError, VersionedVector, decode_record, encode_record, upsert_entry


def _entry(version: int, seed: int = 0, dim: int = 8, dtype: str = "float32") -> VersionedVector:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(dtype)
    return VersionedVector(version, 1_700_000_000_000 + version, vector)


def test_round_trip_keeps_versions_times_and_exact_floats() -> None:
    entries = [_entry(3, dim=64), _entry(2, seed=1, dim=32), _entry(1, seed=2, dim=16, dtype="float16")]
    decoded = decode_record(encode_record(entries))
    assert [(e.version, e.updated_at_ms, e.dim) for e in decoded] == [
        (3, entries[0].updated_at_ms, 64),
        (2, entries[1].updated_at_ms, 32),
        (1, entries[2].updated_at_ms, 16),
    ]
    for original, back in zip(entries, decoded, strict=True):
        assert back.vector.dtype == original.vector.dtype
        np.testing.assert_array_equal(back.vector, original.vector)


def test_record_size_is_vector_bytes_plus_small_headers() -> None:
    record = encode_record([_entry(1, dim=64)])
    assert len(record) == 4 + 15 + 64 * 4


def test_upsert_replaces_the_same_version_and_keeps_highest_first() -> None:
    entries: list[VersionedVector] = []
    entries, added, evicted = upsert_entry(entries, _entry(1), keep=3)
    assert added and evicted == []
    entries, added, _ = upsert_entry(entries, _entry(2), keep=3)
    replacement = _entry(1, seed=9)
    entries, added, evicted = upsert_entry(entries, replacement, keep=3)
    assert not added and evicted == []
    assert [e.version for e in entries] == [2, 1]
    np.testing.assert_array_equal(entries[1].vector, replacement.vector)


def test_cap_pushes_out_the_oldest_versions() -> None:
    entries: list[VersionedVector] = []
    for version in range(1, 8):
        entries, _, evicted = upsert_entry(entries, _entry(version), keep=5)
    assert [e.version for e in entries] == [7, 6, 5, 4, 3]
    assert evicted == [2]
    entries, added, evicted = upsert_entry(entries, _entry(1), keep=5)
    assert [e.version for e in entries] == [7, 6, 5, 4, 3] and added and evicted == [1]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"XX\x01\x00",
        b"EV\x02\x00",
        encode_record([_entry(1)])[:-3],
        encode_record([_entry(1)]) + b"\x00",
    ],
)
def test_corrupt_records_raise_a_format_error(data: bytes) -> None:
    with pytest.raises(RecordFormatError):
        decode_record(data)


def test_upsert_on_bytes_matches_upsert_on_entries() -> None:
    from store.record import upsert_record

    rng = np.random.default_rng(5)
    raw: bytes | None = None
    entries: list[VersionedVector] = []
    for step in range(40):
        version = int(rng.integers(1, 9))
        dtype = "float16" if step % 5 == 0 else "float32"
        new = _entry(version, seed=step, dim=int(rng.integers(1, 20)), dtype=dtype)
        entries, added, evicted = upsert_entry(entries, new, keep=4)
        raw, raw_added, raw_evicted = upsert_record(raw, new.version, new.updated_at_ms, new.vector, keep=4)
        assert (raw_added, raw_evicted) == (added, evicted)
        assert raw == encode_record(entries)


@given(
    st.lists(
        st.tuples(st.integers(1, 200), st.integers(1, 12), st.sampled_from(["float32", "float16"])),
        min_size=1,
        max_size=12,
    )
)
def test_compact_splices_match_upserts_on_entries(writes: list[tuple[int, int, str]]) -> None:
    from store.record import COMPACT_RECORD_FORMAT, encode_entries, splice_entry

    raw: bytes | None = None
    entries: list[VersionedVector] = []
    for step, (version, dim, dtype) in enumerate(writes):
        drawn = _entry(version, seed=step, dim=dim, dtype=dtype)
        new = VersionedVector(version, 1_700_000_000_000 + step, drawn.vector)  # each write its own time
        entries, added, evicted = upsert_entry(entries, new, keep=3)
        entry = encode_entries(version, new.updated_at_ms, new.vector.reshape(1, -1), COMPACT_RECORD_FORMAT)[
            0
        ]
        raw, raw_added, raw_evicted = splice_entry(raw, version, entry, 3, COMPACT_RECORD_FORMAT)
        assert (raw_added, raw_evicted) == (added, evicted)
        assert [(e.version, e.updated_at_ms) for e in decode_record(raw)] == [
            (e.version, e.updated_at_ms) for e in entries
        ]
        for got, want in zip(decode_record(raw), entries, strict=True):
            assert np.array_equal(got.vector, want.vector.astype(np.float32))
