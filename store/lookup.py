"""Where a lookup resolves a version: the serving version by default, never a mix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from store.errors import VersionNotFoundError
from store.record import VersionedVector
from store.vector_store import VersionedVectorStore

__all__ = ["ResolvedVector", "lookup_many", "lookup_one", "resolve_entry"]


@dataclass(frozen=True)
class ResolvedVector:
    """A vector as served: which version it is, when it was written, and where it came from."""

    kind: str
    id: str
    version: int
    vector: np.ndarray
    updated_at_ms: int
    source: str = "native"


def resolve_entry(entries: list[VersionedVector], version: int) -> VersionedVector:
    """The entry of exactly ``version``; raises :class:`VersionNotFoundError` otherwise.

    There is deliberately no fallback to another version: a caller pairing this vector with
    vectors of ``version`` would otherwise compare vectors from unrelated spaces.
    """
    for entry in entries:
        if entry.version == version:
            return entry
    held = [entry.version for entry in entries]
    raise VersionNotFoundError(f"no vector of version {version} (held: {held})")


def lookup_one(store: VersionedVectorStore, kind: str, entity_id: str, version: int) -> ResolvedVector | None:
    """One entity at ``version``; ``None`` if the id is unknown.

    Raises :class:`VersionNotFoundError` if the id is known but lacks that version.
    """
    entries = store.get_record(kind, entity_id)
    if entries is None:
        return None
    entry = resolve_entry(entries, version)
    return ResolvedVector(kind, entity_id, entry.version, entry.vector, entry.updated_at_ms)


def lookup_many(
    store: VersionedVectorStore, kind: str, ids: list[str], version: int
) -> list[ResolvedVector | None]:
    """Many entities at one ``version`` (one multi-get); ``None`` for ids without it."""
    resolved: list[ResolvedVector | None] = []
    for entity_id, entries in zip(ids, store.get_records(kind, ids), strict=True):
        entry = next((e for e in entries or [] if e.version == version), None)
        resolved.append(
            None
            if entry is None
            else ResolvedVector(kind, entity_id, entry.version, entry.vector, entry.updated_at_ms)
        )
    return resolved
