"""Key layout of the store: entities are a kind prefix then the id in UTF-8; metadata keys."""

from __future__ import annotations

import struct
from typing import Literal, cast

__all__ = [
    "COUNT_PREFIX",
    "INCARNATION_KEY",
    "KINDS",
    "OUTBOX_KEY",
    "SERVING_KEY",
    "U64",
    "Kind",
    "entity_key",
    "parse_entity_key",
]

Kind = Literal["user", "item"]
KINDS: tuple[Kind, ...] = ("user", "item")
_PREFIX: dict[str, bytes] = {"user": b"u:", "item": b"i:"}
#: Keys of the default column family (README "Store format").
SERVING_KEY = b"meta:serving_version"
INCARNATION_KEY = b"meta:broker_incarnation"
OUTBOX_KEY = b"meta:outbox"
COUNT_PREFIX = b"count:"
#: How numbers are stored: little-endian u64.
U64 = struct.Struct("<Q")
_KIND_OF_PREFIX: dict[bytes, str] = {prefix: kind for kind, prefix in _PREFIX.items()}


def entity_key(kind: str, entity_id: str) -> bytes:
    """The RocksDB key of one entity: ``u:<id>`` or ``i:<id>``."""
    try:
        return _PREFIX[kind] + entity_id.encode("utf-8")
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}") from None


def parse_entity_key(key: bytes) -> tuple[Kind, str]:
    """Inverse of :func:`entity_key`."""
    kind = _KIND_OF_PREFIX.get(key[:2])
    if kind is None:
        raise ValueError(f"not an entity key: {key[:16]!r}")
    return cast(Kind, kind), key[2:].decode("utf-8")
