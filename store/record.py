"""Binary record format for one entity's versioned vectors.

A record holds the vectors of one (kind, id) for its most recent encoder versions, highest
version first, one entry per version. Two layouts (little endian) are read; the first byte
tells them apart::

    format 1
    header : magic b"EV" | format u8 (=1) | entry count u8
    entry  : version u32 | updated_at_ms u64 | dim u16 | dtype u8 (0=float32, 1=float16)
             | dim * itemsize bytes of vector data

    format 2 (compact: 10 bytes of overhead for one version instead of 19)
    header : format u8 (=2); entries follow up to the end of the record
    entry  : version LEB128 varint | updated_at_ms u48 | shape u16 (dim in the low 14 bits,
             bit 14 the forward flag, dtype in the top bit: 0=float32, 1=float16)
             | dim * itemsize bytes of vector data

A **forward** entry holds a vector carried forward into its version from an older version's
space (a hot swap's forward fill) rather than one its encoder computed; reads say so, and the
native backfill replaces it. Only format 2 marks it; format 1 entries are never forward.

The functions write format 1 unless asked for another; the store writes format 2 and rewrites
a format-1 record as format 2 when it next updates it.

No pickle and no JSON floats: decoding is ``struct`` plus ``numpy.frombuffer``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from store.errors import RecordFormatError

__all__ = [
    "COMPACT_RECORD_FORMAT",
    "RECORD_FORMAT",
    "RecordFormatError",
    "VersionedVector",
    "decode_record",
    "encode_record",
    "record_header",
    "upsert_entry",
]

RECORD_FORMAT = 1
COMPACT_RECORD_FORMAT = 2
_MAGIC = b"EV"
_HEADER = struct.Struct("<2sBB")
_ENTRY = struct.Struct("<IQHB")
_COMPACT_HEADER = bytes([COMPACT_RECORD_FORMAT])
_COMPACT_TAIL = struct.Struct("<IHH")  # updated_at_ms low 32 bits | high 16 bits | shape
_MAX_COMPACT_DIM = 0x3FFF
_FORWARD_BIT = 0x4000
_MAX_TIMESTAMP_MS = (1 << 48) - 1
_DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class VersionedVector:
    """One vector of one encoder version, with the time it was written (epoch ms)."""

    version: int
    updated_at_ms: int
    vector: np.ndarray
    #: Carried forward from an older version's space, not computed by this version's encoder.
    forward: bool = False

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])


def encode_record(entries: list[VersionedVector], record_format: int = RECORD_FORMAT) -> bytes:
    """Serialise entries (already ordered highest version first) into one record."""
    if len(entries) > 255:
        raise RecordFormatError("a record holds at most 255 entries")
    parts = [record_header(record_format, len(entries))]
    for entry in entries:
        vector, code = _storable(entry.vector)
        parts.append(
            _entry_header(
                record_format, entry.version, entry.updated_at_ms, vector.shape[0], code, entry.forward
            )
        )
        parts.append(vector.tobytes())
    return b"".join(parts)


def decode_record(data: bytes) -> list[VersionedVector]:
    """Parse a record of either format; vectors come back as read-only float32 or float16 arrays."""
    entries: list[VersionedVector] = []
    for version, updated_at, dim, code, forward, _, start, _ in _raw_entries(data):
        vector = np.frombuffer(data, dtype=_DTYPES[code], count=dim, offset=start)
        entries.append(VersionedVector(version, updated_at, vector, forward))
    return entries


def record_format_of(data: bytes) -> int:
    """The format number of a record (1 or 2); raises :class:`RecordFormatError` otherwise."""
    if data[:1] == _COMPACT_HEADER:
        return COMPACT_RECORD_FORMAT
    if len(data) < _HEADER.size:
        raise RecordFormatError("record shorter than its header")
    magic, fmt, _ = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC or fmt != RECORD_FORMAT:
        raise RecordFormatError(f"unknown record header {magic!r} format {fmt}")
    return RECORD_FORMAT


def _storable(vector: np.ndarray) -> tuple[np.ndarray, int]:
    """The vector as little-endian float32 or float16 (others become float32), and its code."""
    code = _DTYPE_CODES.get(vector.dtype.newbyteorder("<"))
    if code is None:
        return np.ascontiguousarray(vector, dtype="<f4"), 0
    return np.ascontiguousarray(vector, dtype=_DTYPES[code]), code


def record_header(record_format: int, count: int) -> bytes:
    """The header of a record of ``count`` entries in ``record_format`` (its entries follow)."""
    if record_format == COMPACT_RECORD_FORMAT:
        return _COMPACT_HEADER
    if record_format == RECORD_FORMAT:
        return _HEADER.pack(_MAGIC, RECORD_FORMAT, count)
    raise RecordFormatError(f"cannot write record format {record_format}")


def _entry_header(
    record_format: int, version: int, updated_at_ms: int, dim: int, code: int, forward: bool = False
) -> bytes:
    if record_format == RECORD_FORMAT:
        if forward:
            raise RecordFormatError("format 1 cannot mark a forward entry")
        return _ENTRY.pack(version, updated_at_ms, dim, code)
    if dim > _MAX_COMPACT_DIM:
        raise RecordFormatError(f"format 2 holds vectors of at most {_MAX_COMPACT_DIM} dimensions")
    if not 0 <= updated_at_ms <= _MAX_TIMESTAMP_MS:
        raise RecordFormatError(f"updated_at_ms {updated_at_ms} does not fit in 48 bits")
    shape = dim | (code << 15) | (_FORWARD_BIT if forward else 0)
    return _varint(version) + _COMPACT_TAIL.pack(updated_at_ms & 0xFFFFFFFF, updated_at_ms >> 32, shape)


def _varint(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise RecordFormatError("versions are between 0 and 2**32 - 1")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    for position in range(offset, min(offset + 5, len(data))):
        byte = data[position]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position + 1
        shift += 7
    raise RecordFormatError("record truncated or corrupt inside a version number")


#: One entry as found in a record: version, updated_at_ms, dim, dtype code, forward flag, and
#: the byte offsets where the entry starts, where its vector data starts and where it ends.
_RawEntry = tuple[int, int, int, int, bool, int, int, int]


def _raw_entries(data: bytes) -> list[_RawEntry]:
    """Every entry of a record of either format, bounds-checked, in stored order."""
    if record_format_of(data) == COMPACT_RECORD_FORMAT:
        return _compact_entries(data)
    return _format1_entries(data)


def _format1_entries(data: bytes) -> list[_RawEntry]:
    count = data[3]
    entries: list[_RawEntry] = []
    offset = _HEADER.size
    for _ in range(count):
        if offset + _ENTRY.size > len(data):
            raise RecordFormatError("record truncated inside an entry header")
        header = _ENTRY.unpack_from(data, offset)
        offset = _append_entry(entries, data, (*header, False), offset, offset + _ENTRY.size)
    if offset != len(data):
        raise RecordFormatError("trailing bytes after the last entry")
    return entries


def _compact_entries(data: bytes) -> list[_RawEntry]:
    entries: list[_RawEntry] = []
    offset = 1
    while offset < len(data):
        version, tail = _read_varint(data, offset)
        if tail + _COMPACT_TAIL.size > len(data):
            raise RecordFormatError("record truncated inside an entry header")
        low, high, shape = _COMPACT_TAIL.unpack_from(data, tail)
        forward = bool(shape & _FORWARD_BIT)
        header = (version, low | (high << 32), shape & _MAX_COMPACT_DIM, shape >> 15, forward)
        offset = _append_entry(entries, data, header, offset, tail + _COMPACT_TAIL.size)
    return entries


def _append_entry(
    entries: list[_RawEntry],
    data: bytes,
    header: tuple[int, int, int, int, bool],
    entry_start: int,
    start: int,
) -> int:
    """Check that the vector of ``header`` fits in ``data`` from ``start``; returns its end."""
    version, updated_at, dim, code, forward = header
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise RecordFormatError(f"unknown dtype code {code}")
    end = start + dim * dtype.itemsize
    if end > len(data):
        raise RecordFormatError("record truncated inside a vector")
    entries.append((version, updated_at, dim, code, forward, entry_start, start, end))
    return end


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
    raw: bytes | None,
    version: int,
    updated_at_ms: int,
    vector: np.ndarray,
    keep: int,
    record_format: int = RECORD_FORMAT,
) -> tuple[bytes, bool, list[int]]:
    """:func:`upsert_entry` on encoded bytes, without decoding the other vectors.

    The entries of ``raw`` (either format) are spliced as byte ranges; the result is written
    in ``record_format``. Returns the new record, whether ``version`` was absent, and the
    versions the cap pushed out.
    """
    entry = encode_entries(version, updated_at_ms, vector.reshape(1, -1), record_format)[0]
    return splice_entry(raw, version, entry, keep, record_format)


def encode_entries(
    version: int,
    updated_at_ms: int | np.ndarray,
    vectors: np.ndarray,
    record_format: int,
    forward: bool = False,
) -> list[bytes]:
    """One encoded entry per row of ``vectors`` (all of one version), for :func:`splice_entry`;
    ``updated_at_ms`` is one time for every row (the header is packed once) or one per row;
    ``forward`` marks them all as carried forward (format 2 only)."""
    data, code = _storable(vectors)
    blob, step = data.tobytes(), data.shape[1] * data.itemsize
    if isinstance(updated_at_ms, np.ndarray):
        return [
            _entry_header(record_format, version, stamp, data.shape[1], code, forward)
            + blob[row * step : (row + 1) * step]
            for row, stamp in enumerate(updated_at_ms.tolist())
        ]
    header = _entry_header(record_format, version, updated_at_ms, data.shape[1], code, forward)
    return [header + blob[row * step : (row + 1) * step] for row in range(data.shape[0])]


def splice_entry(
    raw: bytes | None, version: int, entry: bytes, keep: int, record_format: int = RECORD_FORMAT
) -> tuple[bytes, bool, list[int]]:
    """Put one encoded entry (of ``version``, from :func:`encode_entries`) into record ``raw``.

    The hot write path does this for every refreshed entity: the other entries are copied as
    byte ranges, never decoded. Returns what :func:`upsert_record` returns.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    if raw and record_format == COMPACT_RECORD_FORMAT and raw[0] == COMPACT_RECORD_FORMAT:
        spliced = _splice_newest_compact(raw, version, entry, keep)
        if spliced is not None:
            return spliced
    entries: list[tuple[int, bytes]] = [(version, entry)]
    added = True
    if raw:
        for held, held_entry in _held_entries(raw, record_format):
            if held == version:
                added = False
            else:
                entries.append((held, held_entry))
        entries.sort(key=_version_of, reverse=True)
    evicted = [held for held, _ in entries[keep:]]
    kept = entries[:keep]
    return record_header(record_format, len(kept)) + b"".join(e for _, e in kept), added, evicted


def _splice_newest_compact(
    raw: bytes, version: int, entry: bytes, keep: int
) -> tuple[bytes, bool, list[int]] | None:
    """The two common writes into a format-2 record whose newest entry has a one-byte
    version: replacing that newest entry, or putting a newer version in front of it (when
    the cap evicts nothing). ``None`` for anything else (the general path handles it)."""
    if len(raw) < 2:
        return None
    newest = raw[1]
    if newest >= 0x80 or version < newest:
        return None
    if version == newest and len(raw) >= 2 + _COMPACT_TAIL.size:  # one entry, replaced: no scan
        shape = raw[8] | (raw[9] << 8)
        if 2 + _COMPACT_TAIL.size + (shape & _MAX_COMPACT_DIM) * (2 if shape >> 15 else 4) == len(raw):
            return _COMPACT_HEADER + entry, False, []
    spans = _compact_spans(raw)
    if len(spans) > keep:  # the cap shrank since the record was written
        return None
    if version == newest:
        return _COMPACT_HEADER + entry + b"".join(span for _, span in spans[1:]), False, []
    if len(spans) >= keep:
        return None
    return _COMPACT_HEADER + entry + raw[1:], True, []


def _version_of(entry: tuple[int, bytes]) -> int:
    return entry[0]


def _held_entries(raw: bytes, record_format: int) -> list[tuple[int, bytes]]:
    """(version, encoded entry in ``record_format``) of every entry of ``raw``."""
    if record_format == COMPACT_RECORD_FORMAT and raw[0] == COMPACT_RECORD_FORMAT:
        return _compact_spans(raw)
    same_format = record_format_of(raw) == record_format
    held: list[tuple[int, bytes]] = []
    for version, updated_at, dim, code, forward, entry_start, start, end in _raw_entries(raw):
        if same_format:
            held.append((version, raw[entry_start:end]))
        else:  # rewritten with the header of ``record_format``; the vector bytes as they are
            header = _entry_header(record_format, version, updated_at, dim, code, forward)
            held.append((version, header + raw[start:end]))
    return held


def _compact_spans(raw: bytes) -> list[tuple[int, bytes]]:
    """:func:`_held_entries` of a format-2 record into format 2: the fast path of every write."""
    spans: list[tuple[int, bytes]] = []
    offset, size = 1, len(raw)
    while offset < size:
        if raw[offset] < 0x80:
            version, tail = raw[offset], offset + 1
        else:
            version, tail = _read_varint(raw, offset)
        if tail + _COMPACT_TAIL.size > size:
            raise RecordFormatError("record truncated inside an entry header")
        shape = raw[tail + 6] | (raw[tail + 7] << 8)
        end = tail + _COMPACT_TAIL.size + (shape & _MAX_COMPACT_DIM) * (2 if shape >> 15 else 4)
        if end > size:
            raise RecordFormatError("record truncated inside a vector")
        spans.append((version, raw[offset:end]))
        offset = end
    return spans
