"""The binary batch format of the lookup API (``application/x-embstream-vectors``).

Layout::

    u32 little endian: header length H in bytes
    H bytes          : UTF-8 JSON object (the header), right-padded with ASCII spaces so the
                       matrix starts at a multiple of 8 bytes from the start of the body
    count*dim*4 bytes: the vectors, a row-major little-endian float32 matrix

The header holds ``format`` (1), ``kind``, ``version``, ``dim`` (0 when no row was found),
``dtype`` (``"float32"``), ``count``, ``ids`` (the id of each row, in request order, found ids
only; an id asked twice gives two rows), ``updated_at`` (epoch ms per row), ``missing`` (the
ids with nothing to give, in request order) and, only when some row is not native,
``source`` (``"native"``, ``"forward"`` or ``"aligned"`` per row).

:func:`decode_vectors` is the client side: it needs numpy and orjson only.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from stream.errors import VectorsFormatError

__all__ = ["VECTORS_FORMAT", "VECTORS_MEDIA_TYPE", "VectorsFormatError", "decode_vectors", "encode_vectors"]

VECTORS_MEDIA_TYPE = "application/x-embstream-vectors"
VECTORS_FORMAT = 1
_LENGTH = struct.Struct("<I")
_ALIGN = 8
_FLOAT32 = np.dtype("<f4")


def encode_vectors(header: dict[str, Any], vectors: np.ndarray) -> bytes:
    """One body: ``header`` (``dim``, ``count``, ``dtype`` and ``format`` added) then the matrix."""
    matrix = np.ascontiguousarray(vectors, dtype=_FLOAT32)
    if matrix.ndim != 2:
        raise VectorsFormatError(f"vectors must be a matrix, got shape {matrix.shape}")
    count, dim = matrix.shape
    full = {"format": VECTORS_FORMAT, **header, "dim": dim, "dtype": "float32", "count": count}
    text = orjson.dumps(full)
    padding = -(_LENGTH.size + len(text)) % _ALIGN
    return b"".join((_LENGTH.pack(len(text) + padding), text, b" " * padding, matrix.data))


def decode_vectors(body: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """The header and the ``count x dim`` float32 matrix of a binary body (a read-only view)."""
    if len(body) < _LENGTH.size:
        raise VectorsFormatError("body shorter than its length prefix")
    (length,) = _LENGTH.unpack_from(body, 0)
    start = _LENGTH.size + length
    if start > len(body):
        raise VectorsFormatError("header runs past the end of the body")
    try:
        header = orjson.loads(body[_LENGTH.size : start])
    except orjson.JSONDecodeError as error:
        raise VectorsFormatError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict) or header.get("dtype") != "float32":
        raise VectorsFormatError("header must be a JSON object with dtype float32")
    count, dim = int(header["count"]), int(header["dim"])
    if len(body) - start != count * dim * _FLOAT32.itemsize:
        raise VectorsFormatError(
            f"expected {count}x{dim} float32 after the header, got {len(body) - start} bytes"
        )
    matrix = np.frombuffer(body, dtype=_FLOAT32, count=count * dim, offset=start).reshape(count, dim)
    return header, matrix
