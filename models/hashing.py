"""Stable id hashing: any string id maps to two embedding buckets, no vocabulary needed.

Two buckets per id (the "hash embedding" trick) make a full collision between two ids rare
even with a small table. The hash is blake2b, so it is the same in every process and on
every machine (Python's built-in ``hash`` is salted per process).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

__all__ = ["id_buckets"]


@lru_cache(maxsize=1 << 18)
def id_buckets(salt: str, entity_id: str, buckets: int) -> tuple[int, int]:
    """Two bucket indices in ``[0, buckets)`` for ``entity_id`` under ``salt``."""
    digest = hashlib.blake2b(entity_id.encode("utf-8"), digest_size=8, person=salt.encode()[:16])
    value = int.from_bytes(digest.digest(), "little")
    return (value & 0xFFFFFFFF) % buckets, (value >> 32) % buckets
