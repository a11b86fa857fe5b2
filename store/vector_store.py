"""The versioned vector store: RocksDB (through rocksdict) holding, per entity, the vectors
of its most recent encoder versions, plus the stream's entity state and source offsets.

Column families:

- ``vectors``: entity key -> record (see :mod:`store.record`), written in the compact format 2,
  float32 or (``vector_dtype="float16"``) float16; blocks of 16 KiB, not compressed for
  float32 (random floats do not compress), zstd for float16 (their exponent bytes do);
- ``state``: entity key -> the stream processor's state bytes for that entity;
- ``offsets``: ``topic/partition`` -> next source offset to apply (u64), written in the same
  write batch as the state and vectors it produced, so a restart neither loses nor
  re-applies an event;
- ``default``: metadata (serving version, per-version entity counts, broker incarnation,
  and the outbox of the last batch's outgoing messages until they are confirmed sent).

Longer than the 400 lines modules keep to, for one reader: this is the one class that reads
the column families (lookups, scans, counts, the serving cache's warm-up, backups); its
writer (:mod:`store.writer`) and its tuning (:mod:`store.options`) live apart.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rocksdict import (
    AccessType,
    Checkpoint,
    Rdict,
)

from store.errors import StoreDamagedError, StoreError, StoreInUseError, StoreOpenError
from store.keys import COUNT_PREFIX, INCARNATION_KEY, KINDS, OUTBOX_KEY, SERVING_KEY, U64, entity_key
from store.options import COLUMN_FAMILIES, StoreOptions
from store.record import VersionedVector, decode_record
from store.record_scan import locate_entry, span_vector
from store.serving_cache import ServingCache
from store.writer import StoreWriter

__all__ = ["CommitListener", "StoreOptions", "StoreWriter", "VersionedVectorStore"]

_BROKER_META_PREFIXES = (b"meta:changelog:", b"meta:watermark:")


class CommitListener(Protocol):
    """Told, after each write batch commits, what it wrote and evicted, in write order
    (the serving cache and the item indexes keep themselves equal to the store this way)."""

    def upsert(
        self,
        kind: str,
        version: int,
        ids: Sequence[str],
        vectors: np.ndarray,
        updated_at_ms: int | np.ndarray,
        forward: bool = False,
    ) -> None: ...

    def discard(self, kind: str, version: int, ids: Sequence[str]) -> None: ...


class VersionedVectorStore:
    """One RocksDB database holding versioned vectors, entity state and offsets.

    A store is opened by one process at a time (RocksDB's lock enforces it); the worker
    writes through :meth:`writer`, the lookup API reads through :meth:`get_records`.
    """

    def __init__(
        self, path: str | Path, options: StoreOptions | None = None, read_only: bool = False
    ) -> None:
        """Open (or create) the store at ``path`` (tuned by ``options``). ``read_only`` opens
        an existing store for reading only, even while a worker holds it (RocksDB's read-only
        mode: a view as of the moment it opened); writes then fail."""
        self.options = options or StoreOptions()
        self.path = Path(path)
        self.keep_versions = self.options.keep_versions
        #: How new vectors are stored; reads return whatever each entry holds.
        self.vector_dtype = self.options.vector_dtype
        self.read_only = read_only
        _check_openable(self.path, read_only)
        if not read_only:
            self.path.mkdir(parents=True, exist_ok=True)
        db_options, column_families = self.options.to_options()
        access = AccessType.read_only() if read_only else AccessType.read_write()
        try:
            self._db = Rdict(
                str(self.path), options=db_options, column_families=column_families, access_type=access
            )
        except Exception as exc:  # rocksdict raises a bare Exception on lock or corruption
            raise _open_error(self.path, exc) from exc
        # Raw mode: keys and values are bytes (rocksdict's annotations assume pickled values).
        self._cf: dict[str, Any] = {name: self._db.get_column_family(name) for name in COLUMN_FAMILIES}
        self._handles = {name: self._db.get_column_family_handle(name) for name in COLUMN_FAMILIES}
        self._counts: Counter[tuple[str, int]] = Counter()
        db: Any = self._db
        for key, value in scan(db, COUNT_PREFIX, self.path):
            if not key.startswith(COUNT_PREFIX):
                break
            kind, version = key[len(COUNT_PREFIX) :].decode().split(":")
            self._counts[(kind, int(version))] = U64.unpack(value)[0]
        # One process owns the store (RocksDB's lock), so the serving version is kept in
        # memory too: every lookup reads it.
        serving = self._db.get(SERVING_KEY)
        self._serving: int | None = None if serving is None else U64.unpack(serving)[0]
        #: The serving version's vectors in memory (:mod:`store.serving_cache`), or ``None``.
        cache_mb = self.options.serving_cache_mb
        self.serving_cache = ServingCache(cache_mb << 20) if cache_mb else None
        self._listeners: list[CommitListener] = []
        if self.serving_cache is not None:
            self.serving_cache.reset(self._serving)

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Tell ``listener`` about every write batch committed from now on."""
        self._listeners.append(listener)

    @property
    def commit_listeners(self) -> list[CommitListener]:
        """Told about every committed write (:class:`CommitListener`), the serving cache first."""
        return [self.serving_cache, *self._listeners] if self.serving_cache is not None else self._listeners

    # ----- reads -------------------------------------------------------------------------

    def get_records(self, kind: str, ids: Sequence[str]) -> list[list[VersionedVector] | None]:
        """The decoded records of ``ids`` (multi-get), ``None`` where an id has none."""
        raw = self._multi_get("vectors", [entity_key(kind, e) for e in ids])
        return [None if value is None else decode_record(value) for value in raw]

    def get_raw_records(self, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        """The encoded records of ``ids`` (multi-get), for readers that decode one entry only."""
        return self._multi_get("vectors", [entity_key(kind, e) for e in ids])

    def scan_raw_records(self, kind: str, first_id: str, last_id: str) -> dict[bytes, bytes]:
        """Every encoded record with a key from ``first_id``'s to ``last_id``'s, by key: one
        sequential read, cheaper than a multi-get when the ids of a batch are adjacent."""
        end = entity_key(kind, last_id)
        found: dict[bytes, bytes] = {}
        for key, raw in scan(self._cf["vectors"], entity_key(kind, first_id), self.path):
            if key > end:
                break
            found[key] = raw
        return found

    def _multi_get(self, column_family: str, keys: list[bytes]) -> list[bytes | None]:
        """One multi-get; a block failing its checksum is a :class:`StoreDamagedError`."""
        try:
            found: list[bytes | None] = self._cf[column_family].get(keys)
        except Exception as exc:  # rocksdict raises a bare Exception
            if "corrupt" in str(exc).lower():
                raise StoreDamagedError(damaged_message(self.path, str(exc))) from exc
            raise
        return found

    def get_record(self, kind: str, entity_id: str) -> list[VersionedVector] | None:
        return self.get_records(kind, [entity_id])[0]

    def get_states(self, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        return self._multi_get("state", [entity_key(kind, entity_id) for entity_id in ids])

    def iter_states(self, kind: str, after: str | None = None) -> Iterable[tuple[str, bytes]]:
        """Every (id, state bytes) of one kind in key order, optionally after id ``after``."""
        return self._iter_kind("state", kind, after)

    def iter_raw_records(self, kind: str, after: str | None = None) -> Iterable[tuple[str, bytes]]:
        """Every (id, encoded record) of one kind in key order, optionally after id ``after``."""
        return self._iter_kind("vectors", kind, after)

    def _iter_kind(self, column_family: str, kind: str, after: str | None) -> Iterator[tuple[str, bytes]]:
        prefix = entity_key(kind, "")
        start = prefix if after is None else entity_key(kind, after) + b"\x00"
        for key, value in scan(self._cf[column_family], start, self.path):
            if not key.startswith(prefix):
                break
            yield key[len(prefix) :].decode("utf-8"), value

    def count_states(self, kind: str) -> int:
        prefix = entity_key(kind, "")
        count = 0
        for key, _ in scan(self._cf["state"], prefix, self.path):
            if not key.startswith(prefix):
                break
            count += 1
        return count

    def get_meta(self, name: str) -> bytes | None:
        value: bytes | None = self._db.get(b"meta:" + name.encode())
        return value

    def get_offset(self, topic: str, partition: int) -> int | None:
        """The next offset of ``topic/partition`` to apply, if any was applied."""
        value = self._cf["offsets"].get(f"{topic}/{partition}".encode())
        return None if value is None else U64.unpack(value)[0]

    def version_counts(self) -> dict[str, dict[int, int]]:
        """Entities holding a vector of each version, per kind."""
        counts: dict[str, dict[int, int]] = {kind: {} for kind in KINDS}
        for (kind, version), count in sorted(self._counts.items()):
            if count:
                counts[kind][version] = count
        return counts

    @property
    def serving_version(self) -> int | None:
        return self._serving

    def set_serving_version(self, version: int) -> None:
        """Serve ``version`` from now on; the serving cache starts afresh if it changed."""
        self._db.put(SERVING_KEY, U64.pack(version))
        changed = version != self._serving
        self._serving = version
        if changed and self.serving_cache is not None:
            self.serving_cache.reset(version)

    def warm_serving_cache(
        self, kinds: Sequence[str] = KINDS, chunk: int = 10_000, stop: threading.Event | None = None
    ) -> int:
        """Copy the serving version's stored vectors into the serving cache, safe while the
        worker writes (see :mod:`store.serving_cache`): ``chunk`` records at a time, each
        chunk read after noting the cache's epoch and read again if a discard or a reset
        came in between.

        Stops early when the cache is full, the serving version changes or ``stop`` is set
        (checked after every chunk of records scanned; set it, and wait for the return,
        before closing the store). Returns how many vectors were copied (0 without a cache
        or a serving version).
        """
        cache, version = self.serving_cache, self._serving
        if cache is None or version is None:
            return 0
        copied = 0
        for kind in kinds:
            prefix = entity_key(kind, "")
            start = prefix
            while True:
                if cache.full() or cache.version != version or (stop is not None and stop.is_set()):
                    return copied
                epoch = cache.epoch
                ids: list[str] = []
                vectors: list[np.ndarray] = []
                stamps: list[int] = []
                scanned, last = 0, None
                for key, raw in scan(self._cf["vectors"], start, self.path):
                    if not key.startswith(prefix) or scanned >= chunk:
                        break
                    scanned, last = scanned + 1, key
                    span = locate_entry(raw, version)
                    if span is not None and not span.forward:  # the cache answers native vectors
                        ids.append(key[len(prefix) :].decode("utf-8"))
                        vectors.append(span_vector(raw, span))
                        stamps.append(span.updated_at_ms)
                filled = _fill(cache, kind, version, ids, vectors, stamps, epoch)
                if filled is None:
                    continue  # a discard or reset came in between: read this chunk again
                copied += filled
                if last is None or scanned < chunk:
                    break
                start = last + b"\x00"
        return copied

    def iter_vectors(
        self,
        kind: str,
        version: int,
        chunk: int = 10_000,
        dim: int | None = None,
        forward_ids: set[str] | None = None,
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every stored vector of ``version`` of one kind, in key order: ``(ids, matrix)``
        chunks of at most ``chunk`` ids scanned, float32; rows of a dimension other than
        ``dim`` (default: the first row's) are left out. ``forward_ids`` collects the ids
        whose vector is a forward entry."""
        prefix = entity_key(kind, "")
        ids: list[str] = []
        rows: list[np.ndarray] = []
        for key, raw in scan(self._cf["vectors"], prefix, self.path):
            if not key.startswith(prefix):
                break
            span = locate_entry(raw, version)
            if span is None:
                continue
            row = span_vector(raw, span)
            dim = row.shape[0] if dim is None else dim
            if row.shape[0] == dim:
                ids.append(key[len(prefix) :].decode("utf-8"))
                rows.append(row)
                if span.forward and forward_ids is not None:
                    forward_ids.add(ids[-1])
            if len(ids) >= chunk:
                yield ids, np.stack(rows).astype(np.float32, copy=False)
                ids, rows = [], []
        if ids:
            yield ids, np.stack(rows).astype(np.float32, copy=False)

    def iter_current_vectors(
        self, kind: str, version: int, serving: int, chunk: int = 10_000, dim: int | None = None
    ) -> Iterator[tuple[list[str], np.ndarray, list[str], np.ndarray]]:
        """:meth:`iter_vectors` of an older ``version`` as a read resolves it: per chunk, the
        ids whose native vector is as fresh as their ``serving`` entry, with those vectors,
        and the ids whose native vector is older or absent, with their serving vectors (for
        the caller to carry back). Serving rows of a dimension other than the first one's are
        left out."""
        prefix = entity_key(kind, "")
        native_ids: list[str] = []
        native_rows: list[np.ndarray] = []
        behind_ids: list[str] = []
        behind_rows: list[np.ndarray] = []
        serving_dim: int | None = None
        for key, raw in scan(self._cf["vectors"], prefix, self.path):
            if not key.startswith(prefix):
                break
            span, fresh = locate_entry(raw, version), locate_entry(raw, serving)
            entity_id = key[len(prefix) :].decode("utf-8")
            if span is not None and (fresh is None or span.updated_at_ms >= fresh.updated_at_ms):
                row = span_vector(raw, span)
                dim = row.shape[0] if dim is None else dim
                if row.shape[0] == dim:
                    native_ids.append(entity_id)
                    native_rows.append(row)
            elif fresh is not None:
                row = span_vector(raw, fresh)
                serving_dim = row.shape[0] if serving_dim is None else serving_dim
                if row.shape[0] == serving_dim:
                    behind_ids.append(entity_id)
                    behind_rows.append(row)
            if len(native_ids) + len(behind_ids) >= chunk:
                yield native_ids, _stacked(native_rows), behind_ids, _stacked(behind_rows)
                native_ids, native_rows, behind_ids, behind_rows = [], [], [], []
        if native_ids or behind_ids:
            yield native_ids, _stacked(native_rows), behind_ids, _stacked(behind_rows)

    def checkpoint(self, target: str | Path) -> Path:
        """A consistent copy of the whole store in ``target`` (a new directory), taken while
        it is in use: a RocksDB checkpoint, whose hard links to the store's files are then
        replaced by copies, so damage to one cannot reach the other. Every write batch is in
        it entirely or not at all, so state, vectors and source offsets agree."""
        target = Path(target)
        if target.exists():
            raise StoreError(f"{target} already exists; a backup goes into a new directory")
        if not target.parent.is_dir():
            raise StoreError(f"{target.parent} is not a directory")
        if target.absolute().resolve().is_relative_to(self.path.absolute().resolve()):
            raise StoreError(f"{target} is inside the store; a backup goes elsewhere")
        checkpoint = Checkpoint(self._db)
        try:
            checkpoint.create_checkpoint(str(target))
            _unshare_files(target)
        except Exception as exc:  # rocksdict raises a bare Exception; OSError from the copies
            shutil.rmtree(target, ignore_errors=True)  # no half backup left behind
            raise StoreError(f"cannot write a backup to {target}: {exc}") from exc
        finally:
            del checkpoint  # it holds the database open
        return target

    def compact(self) -> None:
        """Flush memtables and compact every column family fully (e.g. to measure its size)."""
        for view in (self._db, *self._cf.values()):
            view.flush()
            view.compact_range(None, None)

    def sst_bytes(self) -> dict[str, int]:
        """Bytes of live SST files per column family (``default`` included)."""
        views: dict[str, Any] = {"default": self._db, **self._cf}
        return {
            name: int(view.property_int_value("rocksdb.live-sst-files-size")) for name, view in views.items()
        }

    # ----- offsets bookkeeping -----------------------------------------------------------

    def ensure_broker_incarnation(self, incarnation: str) -> bool:
        """Forget stored source offsets if they belong to another broker incarnation.

        Offsets of a topic on one broker mean nothing on another (the embedded broker keeps
        topics in memory, so every start is a new incarnation). Entity state and vectors
        stay. Returns True when the offsets were reset.
        """
        current = self._db.get(INCARNATION_KEY)
        if current == incarnation.encode():
            return False
        for key in [key for key, _ in scan(self._cf["offsets"], None, self.path)]:
            self._cf["offsets"].delete(key)
        # Positions in the scale-out topics (changelog read positions and generations, item
        # watermarks of source offsets) are offsets of that broker too.
        for prefix in _BROKER_META_PREFIXES:
            stale = []
            for key, _ in scan(self._db, prefix, self.path):
                if not key.startswith(prefix):
                    break
                stale.append(key)
            for key in stale:
                self._db.delete(key)
        self._db.put(INCARNATION_KEY, incarnation.encode())
        return current is not None

    def forget_worker_id(self) -> None:
        """Drop the worker name kept in the store (a copy seeding another worker)."""
        self._db.delete(b"meta:worker_id")

    def pending_outbox(self) -> bytes | None:
        """Outgoing messages committed with the last batch and not yet confirmed sent."""
        return self._db.get(OUTBOX_KEY)

    def clear_outbox(self) -> None:
        self._db.delete(OUTBOX_KEY)

    # ----- writes ------------------------------------------------------------------------

    def writer(self) -> StoreWriter:
        return StoreWriter(self)

    def close(self) -> None:
        """Release the database; column-family views hold it open until dropped."""
        for view in self._cf.values():
            view.close()
        self._cf.clear()
        self._handles.clear()
        self._db.close()


def _stacked(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows).astype(np.float32, copy=False) if rows else np.empty((0, 0), dtype=np.float32)


def scan(view: Any, start: bytes | None, path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Keys and values of a column family (or the default one) from ``start`` on.

    rocksdict's ``items()`` ends quietly when a block fails its checksum; this checks the
    iterator's status at the end and raises :class:`StoreDamagedError` instead, so a scan
    (backfill, cache warm-up, check) never mistakes damage for the end of the data.
    """
    iterator = view.iter()
    if start is None:
        iterator.seek_to_first()
    else:
        iterator.seek(start)
    while iterator.valid():
        yield iterator.key(), iterator.value()
        iterator.next()
    try:
        iterator.status()
    except Exception as exc:  # rocksdict raises a bare Exception
        raise StoreDamagedError(damaged_message(path, str(exc))) from exc


def _unshare_files(directory: Path) -> None:
    """Replace every hard-linked file in ``directory`` by a copy of its own."""
    for file in directory.iterdir():
        if file.is_file() and file.stat().st_nlink > 1:
            copy = file.with_name(file.name + ".copying")
            shutil.copyfile(file, copy)
            os.replace(copy, file)


def _check_openable(path: Path, read_only: bool) -> None:
    """Refuse, with a way out, directories RocksDB would misread: a missing store opened
    for reading, or a store whose ``CURRENT`` file is gone (RocksDB would start a new,
    empty database next to the old files)."""
    if read_only and not (path / "CURRENT").is_file():
        raise StoreOpenError(f"there is no store at {path}")
    if path.is_dir() and not (path / "CURRENT").exists():
        leftovers = [p.name for p in path.iterdir() if p.name.startswith("MANIFEST-") or p.suffix == ".sst"]
        if leftovers:
            raise StoreDamagedError(damaged_message(path, "its CURRENT file is missing"))


def _open_error(path: Path, exc: Exception) -> StoreOpenError:
    text = str(exc)
    if "lock" in text.lower():
        return StoreInUseError(
            f"the store at {path} is in use by another process (an `embstream run` on this "
            f"directory?); stop it first, or use `embstream store backup` to copy it while it runs "
            f"({text})"
        )
    if "corrupt" in text.lower():
        return StoreDamagedError(damaged_message(path, text))
    return StoreOpenError(f"cannot open the store at {path}: {text}")


def damaged_message(path: Path, detail: str) -> str:
    """What to say about a damaged store: what is wrong and the two ways out."""
    return (
        f"the store at {path} is damaged ({detail}). Ways out: restore a backup with "
        f"`embstream store restore BACKUP_DIR --data-dir {path}`; or move the directory away and "
        "start the worker again, which rebuilds state and vectors from the events the "
        "interactions topic still retains"
    )


def _fill(
    cache: ServingCache,
    kind: str,
    version: int,
    ids: list[str],
    vectors: list[np.ndarray],
    stamps: list[int],
    epoch: int,
) -> int | None:
    """Fill one scanned chunk; ``None`` if the cache refused it for a newer epoch."""
    if not ids:
        return 0
    try:
        matrix = np.stack(vectors)
    except ValueError:  # rows of one version differ in dimension: leave them to RocksDB
        return 0
    if not cache.fill(kind, version, ids, matrix, np.asarray(stamps, dtype=np.int64), epoch):
        return None if cache.version == version else 0
    return len(ids)
