"""Find one version's entry inside an encoded record without decoding the others.

The read path asks each record for one version only; :func:`store.record.decode_record`
builds every entry (a ``VersionedVector`` and a numpy view per version), which dominates a
batch read. :func:`locate_entry` walks the entry headers with the layout constants of
:mod:`store.record` (shared, so the two cannot drift apart) and reports where the wanted
vector's bytes are, so callers slice or view only that vector.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from store.record import (
    _COMPACT_TAIL,
    _DTYPES,
    _ENTRY,
    _FORWARD_BIT,
    _HEADER,
    _MAGIC,
    _MAX_COMPACT_DIM,
    COMPACT_RECORD_FORMAT,
    RECORD_FORMAT,
    _raw_entries,
)

__all__ = [
    "EntrySpan",
    "entry_spans",
    "latest_update_ms",
    "locate_entry",
    "newest_and_entry",
    "span_vector",
]

#: The record header and the first entry's header, read in one go.
_FIRST = struct.Struct("<" + _HEADER.format.lstrip("<") + _ENTRY.format.lstrip("<"))
#: Format 2: where the first entry's vector starts when its version takes one varint byte.
_COMPACT_FIRST_END = 2 + _COMPACT_TAIL.size


class EntrySpan(NamedTuple):
    """Where one entry's vector lies in its record: ``data[offset : offset + nbytes]``."""

    updated_at_ms: int
    offset: int
    dim: int
    dtype: np.dtype
    #: Carried forward from an older version's space (a forward fill), not encoded natively.
    forward: bool = False

    @property
    def nbytes(self) -> int:
        return self.dim * self.dtype.itemsize


def locate_entry(data: bytes, version: int) -> EntrySpan | None:
    """The span of ``version``'s vector in record ``data`` (either record format), or ``None``
    if it holds none.

    Raises :class:`RecordFormatError` on a bad header or an entry that runs past the end.
    """
    found = _newest_compact_entry(data, version) or _newest_entry(data, version)
    if found is not None:
        return found
    for held, updated_at, dim, code, forward, _, start, _ in _raw_entries(data):
        if held == version:
            return EntrySpan(updated_at, start, dim, _DTYPES[code], forward)
    return None


def entry_spans(data: bytes) -> dict[int, EntrySpan]:
    """Every entry of record ``data`` by version, in one walk (for callers that need several
    versions of a record, or its newest time, at once)."""
    return {
        held: EntrySpan(updated_at, start, dim, _DTYPES[code], forward)
        for held, updated_at, dim, code, forward, _, start, _ in _raw_entries(data)
    }


def newest_and_entry(data: bytes, version: int) -> tuple[int, EntrySpan | None]:
    """When the newest entry of record ``data`` was written, and ``version``'s span (or
    ``None``), in one walk."""
    latest, found = 0, None
    for held, updated_at, dim, code, forward, _, start, _ in _raw_entries(data):
        latest = max(latest, updated_at)
        if held == version:
            found = EntrySpan(updated_at, start, dim, _DTYPES[code], forward)
    return latest, found


def _newest_compact_entry(data: bytes, version: int) -> EntrySpan | None:
    """Format 2, the newest entry asked for and a version below 128 (one varint byte)."""
    if version >= 0x80 or len(data) < _COMPACT_FIRST_END:
        return None
    if data[0] != COMPACT_RECORD_FORMAT or data[1] != version:
        return None
    low, high, shape = _COMPACT_TAIL.unpack_from(data, 2)
    dtype = _DTYPES.get(shape >> 15)
    dim = shape & _MAX_COMPACT_DIM
    if dtype is None or _COMPACT_FIRST_END + dim * dtype.itemsize > len(data):
        return None
    return EntrySpan(low | (high << 32), _COMPACT_FIRST_END, dim, dtype, bool(shape & _FORWARD_BIT))


def _newest_entry(data: bytes, version: int) -> EntrySpan | None:
    """Format 1, the newest entry asked for, in one unpack; ``None`` if it is not."""
    if len(data) < _FIRST.size:
        return None
    magic, fmt, count, held, updated_at, dim, code = _FIRST.unpack_from(data, 0)
    dtype = _DTYPES.get(code)
    if held != version or not count or magic != _MAGIC or fmt != RECORD_FORMAT or dtype is None:
        return None
    return (
        EntrySpan(updated_at, _FIRST.size, dim, dtype)
        if _FIRST.size + dim * dtype.itemsize <= len(data)
        else None
    )


def span_vector(data: bytes, span: EntrySpan) -> np.ndarray:
    """The vector at ``span`` as a read-only view of ``data`` (its stored dtype)."""
    return np.frombuffer(data, dtype=span.dtype, count=span.dim, offset=span.offset)


def latest_update_ms(data: bytes) -> int:
    """When the newest entry of record ``data`` was written: the time of the entity state its
    vectors encode (a backfill writes its vectors with this time, not its own)."""
    return max(updated_at for _, updated_at, *_ in _raw_entries(data))
