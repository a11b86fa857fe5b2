"""Where a batch's time goes: the refresher alone, timed per step, at a world's cardinality.

Runs the worker's refresher in this process on pre-built batches of synthetic events (no
broker: what is left is the refresh thread's own work), with the worker's default serving
cache and item index, and times each step of every batch with a wall clock around the step's
one call (a handful of calls per batch, so the timing does not skew what it measures, as a
per-call profiler would). Prints the events/s and each step's share as JSON.

The garbage collector runs with the worker's thresholds (``stream.service.GC_THRESHOLDS``),
or with ``--python-gc`` with Python's defaults (what the worker ran with before).

    python -m benchmarks.phases [--world real|small] [--events 200000] [--python-gc]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.storage import _event_records
from models import encoder as encoder_module
from models.bootstrap import ensure_default_encoder
from models.registry import EncoderRegistry
from models.synthetic import WORLDS, SyntheticWorld
from store import serving_cache, writer
from store.item_indexes import ItemIndexes
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore
from stream.ingest import poison, refresher
from stream.service import fewer_collections

__all__ = ["run_phases"]

#: (owner, attribute, step): the calls timed, outermost first.
_STEPS: list[tuple[Any, str, str]] = [
    (refresher.EmbeddingRefresher, "process", "whole batch"),
    (refresher.EmbeddingRefresher, "decode", "parse the events"),
    (VersionedVectorStore, "get_states", "read the entities' states"),
    (refresher, "apply_user_events", "user state update"),
    (refresher, "apply_item_events", "item state update"),
    (encoder_module.TorchEncoder, "encode_users", "user tower (featurise and torch)"),
    (encoder_module.TorchEncoder, "encode_items", "item tower"),
    (writer.StoreWriter, "put_state", "stage states"),
    (writer.StoreWriter, "put_vectors", "stage vectors (record reads and splices)"),
    (refresher.EmbeddingRefresher, "_updates", "update messages"),
    (refresher, "encode_outbox", "outbox encoding"),
    (poison.CrashGuard, "begin", "crash guard mark"),
    (serving_cache.ServingCache, "upsert", "serving cache"),
    (ItemIndexes, "upsert", "item index feed"),
]


def _timed(times: Counter[str], step: str, call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            times[step] += time.perf_counter() - began

    return timed


class _TimedWrites:
    """The store's database with its ``write`` timed (the one RocksDB write of a batch)."""

    def __init__(self, database: Any, times: Counter[str]) -> None:
        self._database = database
        self.write = _timed(times, "RocksDB write", database.write)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database, name)


def run_phases(world: str, events: int, python_gc: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    times: Counter[str] = Counter()
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in _STEPS]
    with tempfile.TemporaryDirectory(prefix="embstream-phases-") as scratch:
        work = Path(scratch)
        registry = EncoderRegistry(work / "registry")
        ensure_default_encoder(registry)
        store = VersionedVectorStore(work / "store", StoreOptions(serving_cache_mb=512))
        store.set_serving_version(1)
        indexes = ItemIndexes(store, dim_of=lambda version: 64)
        indexes.track(serving=1)
        indexes.start()
        batches = list(_event_records(SyntheticWorld(**WORLDS[world]), events, int(time.time() * 1000)))
        try:
            for (owner, name, step), (_, _, call) in zip(_STEPS, originals, strict=True):
                setattr(owner, name, _timed(times, step, call))
            store._db = _TimedWrites(store._db, times)
            applying = refresher.EmbeddingRefresher(
                store, registry.load(1), updates_topic="updates", dlq_topic="dlq"
            )
            with contextlib.nullcontext() if python_gc else fewer_collections():
                began = time.perf_counter()
                for batch in batches:
                    applying.process(batch)
                seconds = time.perf_counter() - began
        finally:
            for owner, name, call in originals:
                setattr(owner, name, call)
            indexes.stop()
            store._db = store._db._database if isinstance(store._db, _TimedWrites) else store._db
            store.close()
    whole = times.pop("whole batch")
    return {
        "world": world,
        "events": events,
        "batches": len(batches),
        "gc_thresholds": list(gc.get_threshold()) if python_gc else "the worker's",
        "events_per_second": round(events / seconds),
        "ms_per_batch": round(whole / len(batches) * 1e3, 1),
        "steps": {
            step: {"ms_per_batch": round(spent / len(batches) * 1e3, 1), "share": round(spent / whole, 3)}
            for step, spent in times.most_common()
        },
        "note": "steps overlap where one calls another (record reads are inside staging vectors)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", choices=sorted(WORLDS), default="real")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--python-gc", action="store_true", help="Python's collector thresholds")
    args = parser.parse_args()
    print(json.dumps(run_phases(args.world, args.events, args.python_gc), indent=2))


if __name__ == "__main__":
    main()
