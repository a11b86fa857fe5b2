"""Looking after a store: describe it, verify every byte of it, restore it from a backup.

Backups are RocksDB checkpoints (:meth:`VersionedVectorStore.checkpoint`), themselves
complete stores: ``restore`` checks one opens and reads, moves the current data directory
aside (nothing is deleted) and copies the backup in its place.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from store.errors import StoreDamagedError, StoreError
from store.keys import KINDS
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore, damaged_message, scan

__all__ = ["describe_store", "estimated_keys", "restore_store", "verify_store"]


def describe_store(store: VersionedVectorStore) -> dict[str, Any]:
    """Serving version, entities per kind and version, states per kind, source offsets."""
    offsets = {
        key.decode(): int.from_bytes(value, "little")
        for key, value in scan(store._cf["offsets"], None, store.path)
    }
    return {
        "path": str(store.path),
        "serving_version": store.serving_version,
        "entities": {
            kind: {str(v): n for v, n in per.items()} for kind, per in store.version_counts().items()
        },
        "states": {kind: store.count_states(kind) for kind in KINDS},
        "source_offsets": offsets,
    }


def estimated_keys(store: VersionedVectorStore) -> int:
    """RocksDB's estimate of the keys in every column family (for a progress bar)."""
    views: dict[str, Any] = {"default": store._db, **store._cf}
    return sum(int(view.property_int_value("rocksdb.estimate-num-keys") or 0) for view in views.values())


def verify_store(
    store: VersionedVectorStore, progress: Callable[[int], None] | None = None
) -> dict[str, int]:
    """Read every key and value of every column family (RocksDB checks each block's
    checksum on the way); ``progress(n)`` hears of every 10,000 keys read. Returns the keys
    per column family; raises
    :class:`StoreDamagedError` naming the damage and the ways out on the first bad block."""
    views: dict[str, Any] = {"default": store._db, **store._cf}
    counts = {}
    for name, view in views.items():
        count = 0
        try:
            for _ in scan(view, None, store.path):  # reading the values checks their blocks
                count += 1
                if progress is not None and count % 10_000 == 0:
                    progress(10_000)
        except StoreDamagedError as error:
            detail = f"column family {name!r}, after {count} keys: {error.__cause__}"
            raise StoreDamagedError(damaged_message(store.path, detail)) from error
        counts[name] = count
    return counts


def restore_store(
    backup: str | Path,
    data_dir: str | Path,
    progress: Callable[[int], None] | None = None,
    new_worker: bool = False,
) -> dict[str, Any]:
    """Make ``data_dir`` a copy of ``backup``.

    The backup is checked first (it must open and read through). ``data_dir`` must not
    exist, be empty, or be a store (a directory with RocksDB's ``CURRENT``) that no process
    holds; neither directory may contain the other. The copy is made next to ``data_dir``
    and renamed into place, so a failed copy leaves the old store where it was; the old
    store is moved to ``<data_dir>.replaced-<time>``, never deleted. Returns the backup's
    description and where the old directory went (``None`` if there was none).

    ``new_worker`` drops the worker name the backup carries, so a worker seeded from another
    worker's backup gets a name of its own at its first start.
    """
    backup, data_dir = Path(backup).absolute(), Path(data_dir).absolute()
    if not backup.is_dir():
        raise StoreError(f"there is no backup at {backup}")
    if _contains(backup, data_dir) or _contains(data_dir, backup):
        raise StoreError(f"the backup {backup} and the store {data_dir} must not contain one another")
    existing = data_dir.exists() and any(data_dir.iterdir())
    if existing and not (data_dir / "CURRENT").is_file():
        raise StoreError(
            f"{data_dir} is not a store (no CURRENT file) and not empty: refusing to move it aside; "
            "pass the store's directory with --data-dir"
        )
    checked = VersionedVectorStore(backup, StoreOptions(block_cache_mb=0), read_only=True)
    try:
        verify_store(checked, progress)
        described = describe_store(checked)
    finally:
        checked.close()
    if existing:
        # Refused (StoreInUseError) while a worker holds it. A damaged store is what a
        # restore is for: it is moved aside below, not deleted.
        with contextlib.suppress(StoreDamagedError):
            VersionedVectorStore(data_dir, StoreOptions(block_cache_mb=0)).close()
    staging = data_dir.with_name(f"{data_dir.name}.restoring-{time.time_ns()}")
    shutil.copytree(backup, staging)
    (staging / "LOCK").unlink(missing_ok=True)
    if new_worker:
        seeded = VersionedVectorStore(staging, StoreOptions(block_cache_mb=0))
        try:
            seeded.forget_worker_id()
        finally:
            seeded.close()
    moved_to = None
    if data_dir.exists():
        moved_to = data_dir.with_name(
            f"{data_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns()}"
        )
        data_dir.rename(moved_to)
    staging.rename(data_dir)
    return {**described, "path": str(data_dir), "replaced": None if moved_to is None else str(moved_to)}


def _contains(outer: Path, inner: Path) -> bool:
    return inner.resolve().is_relative_to(outer.resolve())
