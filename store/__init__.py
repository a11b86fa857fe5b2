"""The versioned vector store: RocksDB records of per-version vectors, and version lookup."""

from __future__ import annotations

from store.errors import (
    EntityNotFoundError,
    IndexBuildingError,
    IndexMissingError,
    IndexUnavailableError,
    InvalidArgumentError,
    NoServingVersionError,
    StoreDamagedError,
    StoreError,
    StoreInUseError,
    StoreOpenError,
    VersionNotFoundError,
    VersionUnreachableError,
)
from store.keys import KINDS, Kind, entity_key, parse_entity_key
from store.lookup import (
    CarryProvider,
    ResolvedMatrix,
    ResolvedVector,
    lookup_many,
    lookup_one,
    resolve_entry,
    resolve_many,
    resolve_matrix,
    resolve_one,
)
from store.maintenance import describe_store, restore_store, verify_store
from store.options import StoreOptions
from store.record import (
    COMPACT_RECORD_FORMAT,
    RECORD_FORMAT,
    RecordFormatError,
    VersionedVector,
    decode_record,
    encode_record,
    upsert_entry,
)
from store.vector_store import VersionedVectorStore
from store.writer import StoreWriter

__all__ = [
    "COMPACT_RECORD_FORMAT",
    "KINDS",
    "RECORD_FORMAT",
    "CarryProvider",
    "EntityNotFoundError",
    "IndexBuildingError",
    "IndexMissingError",
    "IndexUnavailableError",
    "InvalidArgumentError",
    "Kind",
    "NoServingVersionError",
    "RecordFormatError",
    "ResolvedMatrix",
    "ResolvedVector",
    "StoreDamagedError",
    "StoreError",
    "StoreInUseError",
    "StoreOpenError",
    "StoreOptions",
    "StoreWriter",
    "VersionNotFoundError",
    "VersionUnreachableError",
    "VersionedVector",
    "VersionedVectorStore",
    "decode_record",
    "describe_store",
    "encode_record",
    "entity_key",
    "lookup_many",
    "lookup_one",
    "parse_entity_key",
    "resolve_entry",
    "resolve_many",
    "resolve_matrix",
    "resolve_one",
    "restore_store",
    "upsert_entry",
    "verify_store",
]
