"""Where a lookup resolves a version: the serving version by default, never a mix; an older
version natively or carried back from the serving version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from store.errors import EntityNotFoundError, NoServingVersionError, StoreError, VersionNotFoundError
from store.record import VersionedVector
from store.record_scan import EntrySpan, locate_entry, span_vector
from store.serving_cache import CacheHits
from store.vector_store import VersionedVectorStore

__all__ = [
    "CarryProvider",
    "ResolvedMatrix",
    "ResolvedVector",
    "lookup_many",
    "lookup_one",
    "resolve_entry",
    "resolve_many",
    "resolve_matrix",
    "resolve_one",
]

#: ``carry(source, target)`` returns a function mapping rows of ``source``'s space into
#: ``target``'s (``models.registry.EncoderRegistry.carry``, which caches the aligner chains),
#: or raises when no chain leads there (:class:`store.errors.VersionUnreachableError`, or the
#: registry's ``IncompatibleVersionsError``); a read that needs it lets that error through.
CarryProvider = Callable[[int, int], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class ResolvedVector:
    """A vector as served: which version it is, when it was written, and where it came from."""

    kind: str
    id: str
    version: int
    vector: np.ndarray
    updated_at_ms: int
    source: str = "native"


@dataclass(frozen=True)
class ResolvedMatrix:
    """A batch as served, column-wise: one float32 row per id found, in request order.

    ``ids[i]`` is the id of ``vectors[i]``; an id requested twice gives two rows. ``missing``
    lists (in request order) the ids with nothing to give. ``sources[i]`` is ``"native"``,
    ``"forward"`` or ``"aligned"``; ``dim`` is 0 when no row was found.
    """

    kind: str
    version: int
    ids: list[str]
    vectors: np.ndarray
    updated_at_ms: list[int]
    sources: list[str]
    missing: list[str]

    @property
    def all_native(self) -> bool:
        return all(source == "native" for source in self.sources)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _source(span: EntrySpan) -> str:
    """A stored entry's source: ``forward`` (carried forward by a hot swap's forward fill,
    until the native backfill replaces it) or ``native`` (computed by its version's encoder)."""
    return "forward" if span.forward else "native"


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

    Native where a record holds that version, as fresh as its serving entry (``source`` is
    ``forward`` when that entry was carried forward by a hot swap's forward fill). For a version
    older than the serving one and with a ``carry`` provider, an entity whose record lacks
    that version, or holds it older than its serving entry (the version is no longer
    written), gets its serving vector carried back (``source="aligned"``). The serving
    version is read once, so every vector of one call comes from one version. Returns the
    version answered and one entry per id (``None`` where there is nothing to give).
    Vectors are float32 whatever the store holds. Raises :class:`NoServingVersionError`
    and, when a vector would have to be carried but cannot, whatever ``carry`` raises.
    """
    cached = _read_cache(store, kind, ids, version)
    if cached is not None:
        return cached.target, _many_with_cache(store, kind, ids, cached)
    found = _locate(store, kind, ids, version, carry is not None)
    resolved: list[ResolvedVector | None] = [None] * len(ids)
    for row, raw, span in found.native:
        vector = _served(span_vector(raw, span))
        resolved[row] = ResolvedVector(
            kind, ids[row], found.target, vector, span.updated_at_ms, _source(span)
        )
    for (row, _, span), vector in zip(found.to_carry, _carried(found, carry), strict=True):
        resolved[row] = ResolvedVector(kind, ids[row], found.target, vector, span.updated_at_ms, "aligned")
    return found.target, resolved


def resolve_one(
    store: VersionedVectorStore,
    kind: str,
    entity_id: str,
    version: int | None,
    carry: CarryProvider | None = None,
) -> ResolvedVector:
    """One id as :func:`resolve_many` resolves it; raises :class:`EntityNotFoundError` when
    the id has no vector at all, and :class:`VersionNotFoundError` (naming the version
    answered and the versions held) when it has none of that version to give."""
    answered, (resolved,) = resolve_many(store, kind, [entity_id], version, carry)
    if resolved is not None:
        return resolved
    record = store.get_record(kind, entity_id)
    if record is None:
        raise EntityNotFoundError(f"unknown {kind} {entity_id!r}")
    held = [entry.version for entry in record]
    raise VersionNotFoundError(f"{kind} {entity_id!r} has no vector of version {answered} (held: {held})")


def resolve_matrix(
    store: VersionedVectorStore,
    kind: str,
    ids: list[str],
    version: int | None,
    carry: CarryProvider | None = None,
) -> ResolvedMatrix:
    """:func:`resolve_many` as one float32 matrix, without a Python object per row.

    Same version rules and errors. Raises :class:`StoreError` if the rows of the version
    answered do not share one dimension (a matrix cannot hold them).
    """
    cached = _read_cache(store, kind, ids, version)
    if cached is not None:
        return _matrix_with_cache(store, kind, ids, cached)
    found = _locate(store, kind, ids, version, carry is not None)
    native = _native_matrix(found.native, found.target)
    if found.to_carry:
        rows, matrix, sources = _merge_rows(found, native, _carried(found, carry))
    else:
        rows, matrix, sources = found.native, native, [_source(span) for _, _, span in found.native]
    present = {row for row, _, _ in rows}
    return ResolvedMatrix(
        kind=kind,
        version=found.target,
        ids=[ids[row] for row, _, _ in rows],
        vectors=matrix,
        updated_at_ms=[span.updated_at_ms for _, _, span in rows],
        sources=sources,
        missing=[entity_id for row, entity_id in enumerate(ids) if row not in present],
    )


# ----- the serving cache (store.serving_cache) -------------------------------------------


@dataclass(frozen=True)
class _Cached:
    """A read answered from the serving cache where it could be: ``missed`` lists the
    request positions the cache did not hold (read from RocksDB next)."""

    target: int
    hits: CacheHits
    missed: list[int]


def _read_cache(
    store: VersionedVectorStore, kind: str, ids: list[str], version: int | None
) -> _Cached | None:
    """The cache's part of a read at the serving version; ``None`` when the cache cannot
    answer (no cache, another version asked, or the cache holds another version)."""
    cache, serving = store.serving_cache, store.serving_version
    if cache is None or serving is None or version not in (None, serving):
        return None
    hits = cache.read(kind, serving, ids)
    if hits is None:
        return None
    if len(hits.positions) == len(ids):
        return _Cached(serving, hits, [])
    held = np.zeros(len(ids), dtype=bool)
    held[hits.positions] = True
    return _Cached(serving, hits, np.flatnonzero(~held).tolist())


def _read_missed(
    store: VersionedVectorStore, kind: str, ids: list[str], cached: _Cached
) -> tuple[list[int], list[np.ndarray], list[int], list[str]]:
    """The missed ids read from RocksDB at the cache's version, and copied into the cache
    (native ones only: the cache answers ``native``): request positions found, their
    float32 vectors, their write times, their sources."""
    missed_ids = [ids[at] for at in cached.missed]
    found = _locate(store, kind, missed_ids, cached.target, may_carry=False)
    vectors = [_served(span_vector(raw, span)) for _, raw, span in found.native]
    stamps = [span.updated_at_ms for _, _, span in found.native]
    sources = [_source(span) for _, _, span in found.native]
    cacheable = [at for at, source in enumerate(sources) if source == "native"]
    if cacheable and len({vectors[at].shape[0] for at in cacheable}) == 1:
        assert store.serving_cache is not None
        store.serving_cache.fill(
            kind,
            cached.target,
            [missed_ids[found.native[at][0]] for at in cacheable],
            np.stack([vectors[at] for at in cacheable]),
            np.asarray([stamps[at] for at in cacheable], dtype=np.int64),
            cached.hits.epoch,
        )
    return [cached.missed[row] for row, _, _ in found.native], vectors, stamps, sources


def _many_with_cache(
    store: VersionedVectorStore, kind: str, ids: list[str], cached: _Cached
) -> list[ResolvedVector | None]:
    resolved: list[ResolvedVector | None] = [None] * len(ids)
    hits, target = cached.hits, cached.target
    for row, (at, stamp) in enumerate(zip(hits.positions.tolist(), hits.updated_at_ms.tolist(), strict=True)):
        resolved[at] = ResolvedVector(kind, ids[at], target, hits.vectors[row], stamp)
    if cached.missed:
        positions, vectors, stamps, sources = _read_missed(store, kind, ids, cached)
        for at, vector, stamp, source in zip(positions, vectors, stamps, sources, strict=True):
            resolved[at] = ResolvedVector(kind, ids[at], target, vector, stamp, source)
    return resolved


def _matrix_with_cache(
    store: VersionedVectorStore, kind: str, ids: list[str], cached: _Cached
) -> ResolvedMatrix:
    hits = cached.hits
    positions, vectors, stamps = hits.positions, hits.vectors, hits.updated_at_ms
    order = None  # how the rows read from RocksDB interleave with the cache's hits
    found_sources: list[str] = []
    if cached.missed:
        found_at, found_vectors, found_stamps, found_sources = _read_missed(store, kind, ids, cached)
        if found_at:
            if len({vector.shape[0] for vector in found_vectors}) != 1 or (
                len(positions) and found_vectors[0].shape[0] != vectors.shape[1]
            ):
                raise StoreError(f"vectors of version {cached.target} differ in dimension")
            matrix = np.stack(found_vectors)
            positions = np.concatenate([positions, np.asarray(found_at, dtype=np.int64)])
            order = np.argsort(positions, kind="stable")
            positions = positions[order]
            vectors = (np.concatenate([vectors, matrix]) if len(hits.positions) else matrix)[order]
            stamps = np.concatenate([stamps, np.asarray(found_stamps, dtype=np.int64)])[order]
    present = positions.tolist()
    sources = ["native"] * len(present)  # the cache answers native vectors only
    if order is not None and any(source != "native" for source in found_sources):
        tagged = np.asarray(["native"] * len(hits.positions) + found_sources, dtype=object)
        sources = tagged[order].tolist()
    missing: list[str] = []
    if len(present) != len(ids):
        held = set(present)
        missing = [entity_id for at, entity_id in enumerate(ids) if at not in held]
    if not present:
        vectors = np.empty((0, 0), dtype=np.float32)
    return ResolvedMatrix(
        kind=kind,
        version=cached.target,
        ids=[ids[at] for at in present],
        vectors=vectors,
        updated_at_ms=stamps.tolist(),
        sources=sources,
        missing=missing,
    )


#: One row found: its position in the request, its record's bytes, where the vector lies.
_Row = tuple[int, bytes, EntrySpan]


@dataclass(frozen=True)
class _Located:
    """One batch read: rows native at ``target``, and rows whose serving vector is carried."""

    target: int
    serving: int | None
    native: list[_Row]
    to_carry: list[_Row]


def _locate(
    store: VersionedVectorStore, kind: str, ids: list[str], version: int | None, may_carry: bool
) -> _Located:
    serving = store.serving_version
    if version is None and serving is None:
        raise NoServingVersionError("no serving version is set yet")
    target = version if version is not None else serving
    assert target is not None
    carry_from = serving if may_carry and serving is not None and target < serving else None
    native: list[_Row] = []
    to_carry: list[_Row] = []
    for row, raw in enumerate(store.get_raw_records(kind, ids)):
        if raw is None:
            continue
        span = locate_entry(raw, target)
        if carry_from is not None:
            # A native entry older than the entity's serving entry missed the refreshes since
            # (its version is no longer written): the serving vector carried back is fresh.
            source = locate_entry(raw, carry_from)
            if source is not None and (span is None or span.updated_at_ms < source.updated_at_ms):
                to_carry.append((row, raw, source))
                continue
        if span is not None:
            native.append((row, raw, span))
    return _Located(target, serving, native, to_carry)


def _carried(found: _Located, carry: CarryProvider | None) -> np.ndarray:
    """The serving vectors of ``found.to_carry`` carried back to the target version."""
    if not found.to_carry:
        return np.empty((0, 0), dtype=np.float32)
    assert carry is not None and found.serving is not None
    stacked = np.stack([span_vector(raw, span) for _, raw, span in found.to_carry]).astype(np.float32)
    return carry(found.serving, found.target)(stacked)


def _native_matrix(rows: list[_Row], version: int) -> np.ndarray:
    """The rows' vectors stacked as float32 (one join of byte slices when stored as float32)."""
    if not rows:
        return np.empty((0, 0), dtype=np.float32)
    dim = rows[0][2].dim
    if any(span.dim != dim for _, _, span in rows):
        raise StoreError(f"vectors of version {version} differ in dimension")
    float32 = np.dtype("<f4")
    if all(span.dtype == float32 for _, _, span in rows):
        joined = b"".join(raw[span.offset : span.offset + span.nbytes] for _, raw, span in rows)
        return np.frombuffer(joined, dtype=float32).reshape(len(rows), dim)
    return np.stack([span_vector(raw, span) for _, raw, span in rows]).astype(np.float32)


def _merge_rows(
    found: _Located, native: np.ndarray, carried: np.ndarray
) -> tuple[list[_Row], np.ndarray, list[str]]:
    """Native and carried rows interleaved back into request order, with their sources."""
    if native.shape[0] and native.shape[1] != carried.shape[1]:
        raise StoreError(f"native and aligned vectors of version {found.target} differ in dimension")
    tagged = sorted(
        [(row, "stored", i) for i, (row, _, _) in enumerate(found.native)]
        + [(row, "aligned", i) for i, (row, _, _) in enumerate(found.to_carry)]
    )
    matrix = np.empty((len(tagged), carried.shape[1]), dtype=np.float32)
    stored_at = [at for at, (_, source, _) in enumerate(tagged) if source == "stored"]
    if stored_at:
        matrix[stored_at] = native
    matrix[[at for at, (_, source, _) in enumerate(tagged) if source == "aligned"]] = carried
    picked = {"stored": found.native, "aligned": found.to_carry}
    rows = [picked[source][i] for _, source, i in tagged]
    sources = [_source(picked[s][i][2]) if s == "stored" else s for _, s, i in tagged]
    return rows, matrix, sources
