"""Binary record format for one entity's versioned vectors.

A record holds the vectors of one (kind, id) for its most recent encoder versions, highest
version first, one entry per version. Layout (little endian)::

    header : magic b"EV" | format u8 (=1) | entry count u8
    entry  : version u32 | updated_at_ms u64 | dim u16 | dtype u8 (0=float32, 1=float16)
             | dim * itemsize bytes of vector data

No pickle and no JSON floats: decoding is ``struct`` plus ``numpy.frombuffer``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RECORD_FORMAT",
    "RecordFormatError",
    "VersionedVector",
    "decode_record",
    "encode_record",
    "upsert_entry",
    "upsert_record",
]

RECORD_FORMAT = 1
_MAGIC = b"EV"
_HEADER = struct.Struct("<2sBB")
_ENTRY = struct.Struct("<IQHB")
_DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}


class RecordFormatError(ValueError):
    """Raised when bytes are not a valid versioned-vector record."""


@dataclass(frozen=True)
class VersionedVector:
    """One vector of one encoder version, with the time it was written (epoch ms)."""

    version: int
    updated_at_ms: int
    vector: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])


def encode_record(entries: list[VersionedVector]) -> bytes:
    """Serialise entries (already ordered highest version first) into one record."""
    if len(entries) > 255:
        raise RecordFormatError("a record holds at most 255 entries")
    parts = [_HEADER.pack(_MAGIC, RECORD_FORMAT, len(entries))]
    for entry in entries:
        vector = entry.vector
        code = _DTYPE_CODES.get(vector.dtype.newbyteorder("<"))
        if code is None:
            vector = vector.astype("<f4")
            code = 0
        parts.append(_ENTRY.pack(entry.version, entry.updated_at_ms, vector.shape[0], code))
        parts.append(np.ascontiguousarray(vector, dtype=_DTYPES[code]).tobytes())
    return b"".join(parts)


def decode_record(data: bytes) -> list[VersionedVector]:
    """Parse a record; vectors come back as read-only float32 or float16 arrays."""
    if len(data) < _HEADER.size:
        raise RecordFormatError("record shorter than its header")
    magic, fmt, count = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC or fmt != RECORD_FORMAT:
        raise RecordFormatError(f"unknown record header {magic!r} format {fmt}")
    entries: list[VersionedVector] = []
    offset = _HEADER.size
    for _ in range(count):
        if offset + _ENTRY.size > len(data):
            raise RecordFormatError("record truncated inside an entry header")
        version, updated_at, dim, code = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        dtype = _DTYPES.get(code)
        if dtype is None:
            raise RecordFormatError(f"unknown dtype code {code}")
        end = offset + dim * dtype.itemsize
        if end > len(data):
            raise RecordFormatError("record truncated inside a vector")
        vector = np.frombuffer(data, dtype=dtype, count=dim, offset=offset)
        entries.append(VersionedVector(version, updated_at, vector))
        offset = end
    if offset != len(data):
        raise RecordFormatError("trailing bytes after the last entry")
    return entries


def upsert_entry(
    entries: list[VersionedVector], new: VersionedVector, keep: int
) -> tuple[list[VersionedVector], bool, list[int]]:
    """Insert ``new``, replacing any entry of the same version; keep the ``keep`` highest.

    Entries stay ordered by version, highest first, so the cap pushes out the oldest
    versions (possibly ``new`` itself, if it is older than ``keep`` versions already held).
    Returns the new entry list, whether ``new.version`` was absent before, and the versions
    that the cap pushed out (so callers can keep per-version counts exact).
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    others = [entry for entry in entries if entry.version != new.version]
    added = len(others) == len(entries)
    merged = sorted([new, *others], key=lambda entry: entry.version, reverse=True)
    evicted = [entry.version for entry in merged[keep:]]
    return merged[:keep], added, evicted


def upsert_record(
    raw: bytes | None, version: int, updated_at_ms: int, vector: np.ndarray, keep: int
) -> tuple[bytes, bool, list[int]]:
    """:func:`upsert_entry` on encoded bytes, without decoding the other vectors.

    The entries of ``raw`` are spliced as byte ranges (the hot write path does this for
    every refreshed entity). Returns the new record, whether ``version`` was absent, and
    the versions the cap pushed out.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    data = np.ascontiguousarray(vector)
    code = _DTYPE_CODES.get(data.dtype.newbyteorder("<"))
    if code is None:
        data, code = data.astype("<f4"), 0
    new_entry = _ENTRY.pack(version, updated_at_ms, data.shape[0], code) + data.tobytes()
    entries: list[tuple[int, bytes]] = [(version, new_entry)]
    added = True
    if raw:
        magic, fmt, count = _HEADER.unpack_from(raw, 0)
        if magic != _MAGIC or fmt != RECORD_FORMAT:
            raise RecordFormatError(f"unknown record header {magic!r} format {fmt}")
        offset = _HEADER.size
        for _ in range(count):
            held, _, dim, dtype_code = _ENTRY.unpack_from(raw, offset)
            end = offset + _ENTRY.size + dim * _DTYPES[dtype_code].itemsize
            if held == version:
                added = False
            else:
                entries.append((held, raw[offset:end]))
            offset = end
    entries.sort(key=lambda entry: entry[0], reverse=True)
    evicted = [held for held, _ in entries[keep:]]
    kept = entries[:keep]
    return _HEADER.pack(_MAGIC, RECORD_FORMAT, len(kept)) + b"".join(e for _, e in kept), added, evicted
