"""Stable id hashing: any string id maps to two embedding buckets, no vocabulary needed.

Two buckets per id (the "hash embedding" trick) make a full collision between two ids rare
even with a small table. The hash is a 64-bit blake2b digest, so it is the same in every
process and on every machine (Python's built-in ``hash`` is salted per process). The low
and high 32 bits pick the two buckets; user state keeps the 64-bit hash of each item in the
history, so a batch is featurised with array arithmetic and no string work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["bucket_pairs", "id_buckets", "id_hash64", "id_hashes64"]


@lru_cache(maxsize=1 << 18)
def id_hash64(salt: str, entity_id: str) -> int:
    """The 64-bit hash of ``entity_id`` under ``salt`` ("user" or "item")."""
    digest = hashlib.blake2b(entity_id.encode("utf-8"), digest_size=8, person=salt.encode()[:16])
    return int.from_bytes(digest.digest(), "little")


def id_hashes64(salt: str, entity_ids: Sequence[str]) -> np.ndarray:
    """:func:`id_hash64` of every id, as a ``uint64`` array, without its cache: for ids most
    of which are seen once (the users of a batch at real cardinality), where a cache would
    only evict the ids worth keeping."""
    fresh = hashlib.blake2b(digest_size=8, person=salt.encode()[:16]).copy

    def digest(entity_id: str) -> bytes:
        hasher = fresh()
        hasher.update(entity_id.encode("utf-8"))
        return hasher.digest()

    return np.frombuffer(b"".join(map(digest, entity_ids)), dtype="<u8").astype(np.uint64)


def id_buckets(salt: str, entity_id: str, buckets: int) -> tuple[int, int]:
    """Two bucket indices in ``[0, buckets)`` for ``entity_id`` under ``salt``."""
    value = id_hash64(salt, entity_id)
    return (value & 0xFFFFFFFF) % buckets, (value >> 32) % buckets


def bucket_pairs(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """:func:`id_buckets` for an array of 64-bit hashes: an ``int64`` array of shape ``[..., 2]``."""
    values = np.asarray(hashes, dtype=np.uint64)
    low = (values & np.uint64(0xFFFFFFFF)) % np.uint64(buckets)
    high = (values >> np.uint64(32)) % np.uint64(buckets)
    return np.stack([low, high], axis=-1).astype(np.int64)
