"""Writes to the store: everything one batch changes, committed in one RocksDB write batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from rocksdict import WriteBatch

from store.errors import StoreError
from store.keys import COUNT_PREFIX, OUTBOX_KEY, U64, entity_key
from store.record import COMPACT_RECORD_FORMAT, encode_entries, record_header, splice_entry

if TYPE_CHECKING:
    from store.vector_store import VersionedVectorStore

__all__ = ["StoreWriter", "count_key"]


def count_key(kind: str, version: int) -> bytes:
    """The key of how many entities of ``kind`` hold a vector of ``version``."""
    return COUNT_PREFIX + f"{kind}:{version}".encode()


class StoreWriter:
    """Accumulates state, vectors and offsets, then writes them in one atomic batch."""

    def __init__(self, store: VersionedVectorStore) -> None:
        self._store = store
        self._batch = WriteBatch(raw_mode=True)
        self._count_delta: Counter[tuple[str, int]] = Counter()
        self._pending: dict[bytes, bytes] = {}
        self.vectors_written: Counter[tuple[str, int]] = Counter()
        # What the commit listeners learn once the batch is written, in write order:
        # ("upsert" or "upsert_forward", kind, version, ids, vectors, updated_at), or
        # ("discard", kind, version, ids).
        self._cache_updates: list[tuple[Any, ...]] = []

    def put_state(self, kind: str, entity_id: str, state: bytes) -> None:
        self._batch.put(entity_key(kind, entity_id), state, self._store._handles["state"])

    def put_vectors(
        self,
        kind: str,
        ids: Sequence[str],
        version: int,
        vectors: np.ndarray,
        updated_at_ms: int | np.ndarray,
        stored_records: Mapping[bytes, bytes] | None = None,
        forward: bool = False,
    ) -> None:
        """Upsert one vector per id at ``version`` (rows of ``vectors``, float32 or float16),
        written at ``updated_at_ms`` (one time, or one per row). ``forward`` marks them as
        carried forward from an older version's space (the item indexes take them, the
        serving cache, which answers native vectors only, does not).

        A float16 store writes them as float16; a float32 store keeps the rows' dtype.
        ``stored_records`` (from :meth:`VersionedVectorStore.scan_raw_records` over a range
        covering every id) saves the multi-get of the records: a key it lacks has none.
        """
        if len(ids) != vectors.shape[0]:
            raise StoreError(f"{len(ids)} ids but {vectors.shape[0]} vectors")
        if len(set(ids)) != len(ids):
            raise StoreError("ids in one put_vectors call must be distinct")
        handle = self._store._handles["vectors"]
        keep = self._store.keep_versions
        if self._store.vector_dtype == "float16":
            vectors = vectors.astype(np.float16)
        keys = [entity_key(kind, entity_id) for entity_id in ids]
        pending, put = self._pending, self._batch.put
        # Records this batch already wrote (dual write: the same ids at a second version)
        # are taken from the batch, not read again.
        if stored_records is not None:
            stored: list[bytes | None] = [stored_records.get(key) for key in keys]
        else:
            unread = [key for key in keys if key not in pending]
            fetched = (
                dict(zip(unread, self._store._multi_get("vectors", unread), strict=True)) if unread else {}
            )
            stored = [fetched.get(key) for key in keys]
        entries = encode_entries(version, updated_at_ms, vectors, COMPACT_RECORD_FORMAT, forward)
        added_count = 0
        evicted_counts: Counter[int] = Counter()
        evicted_ids: dict[int, list[str]] = {}
        first = record_header(COMPACT_RECORD_FORMAT, 1)
        for entity_id, key, old, entry in zip(ids, keys, stored, entries, strict=True):
            held = pending.get(key, old)
            if held is None:  # no record yet: this entry is the whole record
                record = first + entry
                added_count += 1
            else:
                record, added, evicted = splice_entry(held, version, entry, keep, COMPACT_RECORD_FORMAT)
                added_count += added
                if evicted:
                    evicted_counts.update(evicted)
                    for gone in evicted:
                        evicted_ids.setdefault(gone, []).append(entity_id)
            pending[key] = record
            put(key, record, handle)
        if self._store.commit_listeners:
            operation = "upsert_forward" if forward else "upsert"
            self._cache_updates.append((operation, kind, version, list(ids), vectors, updated_at_ms))
            self._cache_updates.extend(
                ("discard", kind, gone, gone_ids) for gone, gone_ids in evicted_ids.items()
            )
        self._count_delta[(kind, version)] += added_count
        for gone, count in evicted_counts.items():
            self._count_delta[(kind, gone)] -= count
        self.vectors_written[(kind, version)] += len(ids)

    def set_offset(self, topic: str, partition: int, next_offset: int) -> None:
        key = f"{topic}/{partition}".encode()
        self._batch.put(key, U64.pack(next_offset), self._store._handles["offsets"])

    def put_meta(self, name: str, value: bytes) -> None:
        self._batch.put(b"meta:" + name.encode(), value)

    def delete_meta(self, name: str) -> None:
        self._batch.delete(b"meta:" + name.encode())

    def set_outbox(self, outbox: bytes) -> None:
        """Keep this batch's outgoing messages with it until they are confirmed sent."""
        self._batch.put(OUTBOX_KEY, outbox)

    def commit(self) -> None:
        """Write everything accumulated in one atomic RocksDB write batch."""
        store = self._store
        counts = Counter(store._counts)
        for (kind, version), delta in self._count_delta.items():
            if delta:
                counts[(kind, version)] += delta
                self._batch.put(count_key(kind, version), U64.pack(counts[(kind, version)]))
        store._db.write(self._batch)
        store._counts = counts
        self._batch = WriteBatch(raw_mode=True)
        self._count_delta.clear()
        self._pending.clear()
        updates, self._cache_updates = self._cache_updates, []
        for listener in store.commit_listeners if updates else ():
            for operation, *arguments in updates:
                if operation == "upsert":
                    listener.upsert(*arguments)
                elif operation == "upsert_forward" and listener is not store.serving_cache:
                    kind, version, ids, vectors, stamps = arguments
                    listener.upsert(kind, version, ids, vectors, stamps, forward=True)
                elif operation == "discard":
                    listener.discard(*arguments)
