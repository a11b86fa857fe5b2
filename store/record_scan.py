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

from store.record import _DTYPES, _ENTRY, _HEADER, _MAGIC, RECORD_FORMAT, RecordFormatError

__all__ = ["EntrySpan", "locate_entry", "span_vector"]

#: The record header and the first entry's header, read in one go.
_FIRST = struct.Struct("<" + _HEADER.format.lstrip("<") + _ENTRY.format.lstrip("<"))


class EntrySpan(NamedTuple):
    """Where one entry's vector lies in its record: ``data[offset : offset + nbytes]``."""

    updated_at_ms: int
    offset: int
    dim: int
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return self.dim * self.dtype.itemsize


def locate_entry(data: bytes, version: int) -> EntrySpan | None:
    """The span of ``version``'s vector in record ``data``, or ``None`` if it holds none.

    Raises :class:`RecordFormatError` on a bad header or an entry that runs past the end.
    """
    return _newest_entry(data, version) or _walk_entries(data, version)


def _newest_entry(data: bytes, version: int) -> EntrySpan | None:
    """The common case, the newest entry asked for, in one unpack; ``None`` if it is not."""
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


def _walk_entries(data: bytes, version: int) -> EntrySpan | None:
    if len(data) < _HEADER.size:
        raise RecordFormatError("record shorter than its header")
    magic, fmt, count = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC or fmt != RECORD_FORMAT:
        raise RecordFormatError(f"unknown record header {magic!r} format {fmt}")
    offset = _HEADER.size
    for _ in range(count):
        if offset + _ENTRY.size > len(data):
            raise RecordFormatError("record truncated inside an entry header")
        held, updated_at, dim, code = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        dtype = _DTYPES.get(code)
        if dtype is None:
            raise RecordFormatError(f"unknown dtype code {code}")
        end = offset + dim * dtype.itemsize
        if end > len(data):
            raise RecordFormatError("record truncated inside a vector")
        if held == version:
            return EntrySpan(updated_at, offset, dim, dtype)
        offset = end
    return None


def span_vector(data: bytes, span: EntrySpan) -> np.ndarray:
    """The vector at ``span`` as a read-only view of ``data`` (its stored dtype)."""
    return np.frombuffer(data, dtype=span.dtype, count=span.dim, offset=span.offset)
