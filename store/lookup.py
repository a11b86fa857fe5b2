"""Where a lookup resolves a version: the serving version by default, never a mix; an older
version natively or carried back from the serving version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from store.errors import NoServingVersionError, VersionNotFoundError
from store.record import VersionedVector
from store.vector_store import VersionedVectorStore

__all__ = ["CarryProvider", "ResolvedVector", "lookup_many", "lookup_one", "resolve_entry", "resolve_many"]

#: ``carry(source, target)`` returns a function mapping rows of ``source``'s space into
#: ``target``'s, or raises :class:`store.errors.VersionUnreachableError`.
CarryProvider = Callable[[int, int], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class ResolvedVector:
    """A vector as served (float32): which version it is, when it was written, and where it
    came from."""

    kind: str
    id: str
    version: int
    vector: np.ndarray
    updated_at_ms: int
    source: str = "native"


def _served(vector: np.ndarray) -> np.ndarray:
    """Vectors are served as float32 whatever the store holds (float16 entries are upcast)."""
    return vector.astype(np.float32, copy=False)


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
    return ResolvedVector(kind, entity_id, entry.version, _served(entry.vector), entry.updated_at_ms)


def lookup_many(
    store: VersionedVectorStore, kind: str, ids: list[str], version: int
) -> list[ResolvedVector | None]:
    """Many entities at exactly ``version`` (one multi-get); ``None`` for ids without it."""
    return resolve_many(store, kind, ids, version)[1]


def resolve_many(
    store: VersionedVectorStore,
    kind: str,
    ids: list[str],
    version: int | None,
    carry: CarryProvider | None = None,
) -> tuple[int, list[ResolvedVector | None]]:
    """Vectors of ``ids`` at ``version`` (the serving version when ``None``).

    Native where a record holds that version. Otherwise, for a version older than the
    serving one and with a ``carry`` provider, the serving vector carried back
    (``source="aligned"``). The serving version is read once, so every vector of one call
    comes from one version. Returns the version answered and one entry per id (``None``
    where there is nothing to give). Raises :class:`NoServingVersionError` and, when a vector
    would have to be carried but cannot, :class:`VersionUnreachableError`.
    """
    serving = store.serving_version
    if version is None and serving is None:
        raise NoServingVersionError("no serving version is set yet")
    target = version if version is not None else serving
    assert target is not None
    resolved: list[ResolvedVector | None] = []
    to_carry: list[tuple[int, VersionedVector]] = []
    for row, (entity_id, entries) in enumerate(zip(ids, store.get_records(kind, ids), strict=True)):
        held = {entry.version: entry for entry in entries or []}
        if target in held:
            entry = held[target]
            resolved.append(
                ResolvedVector(kind, entity_id, target, _served(entry.vector), entry.updated_at_ms)
            )
            continue
        resolved.append(None)
        if carry is not None and serving is not None and target < serving and serving in held:
            to_carry.append((row, held[serving]))
    if to_carry and carry is not None and serving is not None:
        carried = carry(serving, target)(np.stack([_served(entry.vector) for _, entry in to_carry]))
        for (row, entry), vector in zip(to_carry, carried, strict=True):
            resolved[row] = ResolvedVector(kind, ids[row], target, vector, entry.updated_at_ms, "aligned")
    return target, resolved
