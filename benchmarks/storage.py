"""Storage footprint, float16 storage mode and backfill throughput of the versioned store.

``run_storage`` writes N users (64-dim vectors, one then two versions, float32 then float16)
through the store's writer in worker-sized batches, with their state, compacts, and reports
bytes per entity per version against the raw 256 bytes of a float32 vector, peak RSS after
writing and after reopening (each case in its own process, so the peaks are its own), and
recall@10 of exact inner-product search with float16 vectors against float32.

``run_backfill`` fills a store by running synthetic events through the refresher (no
broker), then times the backfill of every entity with a second encoder version (a copy of
version 1's weights), in the worker's chunks of 2,000 entities and in chunks of 20,000;
then, side by side in rounds, the same model built in and exported then imported (the
inference cost of an imported version against the built-in one).

    python -m benchmarks.storage [--entities 1000000] [--backfill-entities 200000] [--world real]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import torch

from models.bootstrap import ensure_default_encoder
from models.encoder import Encoder, TorchEncoder
from models.exported import builtin_towers, export_towers
from models.features import EVENT_TYPES, UserState
from models.registry import EncoderRegistry
from models.synthetic import WORLDS, SyntheticWorld
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore
from stream.ingest.refresher import ConsumedRecord, EmbeddingRefresher
from stream.rollout.backfill import Backfiller
from stream.rollout.plane import BACKFILL_CHUNK

__all__ = ["main", "run_backfill", "run_storage"]

DIM = 64
RAW_VECTOR_BYTES = DIM * 4
WRITE_BATCH = 5_000  # the worker's default batch_max_records
STATE_TEMPLATES = 4_096
WRITTEN_AT_MS = 1_767_225_600_000
_DAY_MS = 86_400_000


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ----- footprint -----------------------------------------------------------------------------


def _user_state_templates(seed: int) -> list[bytes]:
    """Serialised user states with 1 to 50 recent interactions (mean about 12), as the
    refresher writes them; entities share these templates to keep generation cheap."""
    rng = np.random.default_rng(seed)
    templates = []
    for _ in range(STATE_TEMPLATES):
        state = UserState(window=50)
        count = int(min(50, rng.geometric(1 / 12)))
        stamps = np.sort(rng.integers(WRITTEN_AT_MS - 7 * _DAY_MS, WRITTEN_AT_MS, size=count))
        for ts in stamps:
            code = int(rng.choice(len(EVENT_TYPES), p=[0.6, 0.24, 0.08, 0.05, 0.03]))
            value = float(rng.integers(1, 6)) if code == len(EVENT_TYPES) - 1 else None
            state.add(f"i{int(rng.integers(0, 100_000))}", code, value, int(ts))
        templates.append(state.to_bytes())
    return templates


def _write_users(store: VersionedVectorStore, entities: int, versions: int, seed: int) -> float:
    """v1 vectors with state (as the refresher writes them), then each further version
    without state (as a backfill writes it); returns the seconds spent."""
    rng = np.random.default_rng(seed)
    templates = _user_state_templates(seed)
    started = time.perf_counter()
    for version in range(1, versions + 1):
        for start in range(0, entities, WRITE_BATCH):
            ids = [f"u{index}" for index in range(start, min(entities, start + WRITE_BATCH))]
            writer = store.writer()
            if version == 1:
                for index, entity_id in enumerate(ids):
                    writer.put_state("user", entity_id, templates[(start + index) % STATE_TEMPLATES])
            writer.put_vectors("user", ids, version, _unit_rows(rng, len(ids)), WRITTEN_AT_MS + version)
            writer.commit()
    return time.perf_counter() - started


def _footprint_case(path: str, entities: int, versions: int, dtype: str) -> dict[str, Any]:
    """Runs in a child process: write, compact, measure."""
    store = VersionedVectorStore(path, StoreOptions(vector_dtype=dtype))
    seconds = _write_users(store, entities, versions, seed=versions)
    rss_after_write = _peak_rss_mb()
    started = time.perf_counter()
    store.compact()
    compact_seconds = time.perf_counter() - started
    sizes = store.sst_bytes()
    store.close()
    vectors_per_version = sizes["vectors"] / entities / versions
    total = sum(sizes.values())
    return {
        "dtype": dtype,
        "versions": versions,
        "entities": entities,
        "write_seconds": round(seconds, 2),
        "compact_seconds": round(compact_seconds, 2),
        "vectors_bytes": sizes["vectors"],
        "state_bytes": sizes["state"],
        "total_bytes": total,
        "vectors_bytes_per_entity_per_version": round(vectors_per_version, 1),
        "vectors_ratio_to_raw_float32": round(vectors_per_version / RAW_VECTOR_BYTES, 4),
        "state_bytes_per_entity": round(sizes["state"] / entities, 1),
        "total_bytes_per_entity": round(total / entities, 1),
        "peak_rss_mb_after_write": rss_after_write,
    }


def _reopen_case(path: str, entities: int, dtype: str) -> dict[str, Any]:
    """Runs in a child process: reopen the store and read 10,000 random records."""
    store = VersionedVectorStore(path, StoreOptions(vector_dtype=dtype))
    rng = np.random.default_rng(0)
    ids = [f"u{index}" for index in rng.integers(0, entities, size=10_000)]
    started = time.perf_counter()
    found = sum(record is not None for record in store.get_records("user", ids))
    read_seconds = time.perf_counter() - started
    store.close()
    return {
        "peak_rss_mb_after_reopen": _peak_rss_mb(),
        "reads_found": found,
        "read_10k_random_ms": round(read_seconds * 1000, 1),
    }


def _imports_only() -> dict[str, Any]:
    """The peak RSS of a child that only imported this module (torch included), for reference."""
    return {"peak_rss_mb_of_a_child_that_only_imports": _peak_rss_mb()}


def _in_child(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: dict[str, Any] = pool.apply(function, args)
    return result


def _recall_at_10(queries: np.ndarray, items: np.ndarray, chunk: int = 100) -> float:
    """Mean overlap of exact inner-product top-10 with float16-stored vectors vs float32."""
    as_served = items.astype(np.float16).astype(np.float32)
    queries_served = queries.astype(np.float16).astype(np.float32)
    overlap = 0
    for start in range(0, len(queries), chunk):
        exact = _top10(queries[start : start + chunk] @ items.T)
        approx = _top10(queries_served[start : start + chunk] @ as_served.T)
        overlap += sum(len(set(a) & set(b)) for a, b in zip(exact, approx, strict=True))
    return overlap / (10 * len(queries))


def _top10(scores: np.ndarray) -> list[list[int]]:
    return np.argpartition(-scores, 10, axis=1)[:, :10].tolist()


def run_storage(work_dir: Path, entities: int = 1_000_000) -> dict[str, Any]:
    """Footprint of float32 (1 and 2 versions) and float16 (1 version), and float16 recall."""
    cases = []
    for dtype, versions in (("float32", 1), ("float32", 2), ("float16", 1)):
        path = work_dir / f"store-{dtype}-{versions}v"
        shutil.rmtree(path, ignore_errors=True)
        case = _in_child(_footprint_case, str(path), entities, versions, dtype)
        case.update(_in_child(_reopen_case, str(path), entities, dtype))
        cases.append(case)
        shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(42)
    recall = _recall_at_10(_unit_rows(rng, 1_000), _unit_rows(rng, 100_000))
    return {
        **_in_child(_imports_only),
        "raw_float32_vector_bytes": RAW_VECTOR_BYTES,
        "cases": cases,
        "float16_recall_at_10": {
            "vectors": "random unit vectors, 100,000 items, 1,000 queries, exact inner product",
            "recall": round(recall, 4),
        },
    }


# ----- backfill ------------------------------------------------------------------------------


def _event_records(world: SyntheticWorld, count: int, end_ms: int) -> Iterator[list[ConsumedRecord]]:
    """Synthetic events over the last 7 days as consumed records, in worker-sized batches."""
    events = world.events(count, start_ms=end_ms - 7 * _DAY_MS, span_ms=7 * _DAY_MS, seed=world.seed + 1)
    for start in range(0, count, WRITE_BATCH):
        yield [
            ConsumedRecord(
                "interactions", 0, start + index, None, orjson.dumps(event), cast(int, event["ts"])
            )
            for index, event in enumerate(events[start : start + WRITE_BATCH])
        ]


def _fill_store(
    store: VersionedVectorStore, encoder: TorchEncoder, entities: int, world_name: str | None = None
) -> dict[str, Any]:
    """Run about ``entities`` users and items' worth of events through the refresher: of a
    uniform world of that size, or ``3 * entities`` events of a named world
    (``models.synthetic.WORLDS``)."""
    if world_name is None:
        world = SyntheticWorld(users=entities * 3 // 4, items=entities // 4, seed=0)
    else:
        world = SyntheticWorld(**WORLDS[world_name])  # type: ignore[arg-type]
    end_ms = int(time.time() * 1000)
    refresher = EmbeddingRefresher(store, encoder, updates_topic="updates", dlq_topic="dlq")
    started = time.perf_counter()
    events = 3 * entities
    for batch in _event_records(world, events, end_ms):
        refresher.process(batch)
    return {
        "events": events,
        "fill_seconds": round(time.perf_counter() - started, 1),
        "users": store.count_states("user"),
        "items": store.count_states("item"),
    }


def _second_version(registry: EncoderRegistry) -> TorchEncoder:
    """Version 2: version 1's weights saved again (backfill cost does not depend on weights)."""
    first = registry.load(1)
    assert isinstance(first, TorchEncoder)
    if registry.latest() == 1:
        registry.save(first.model, parent=1, training={"data": "copy of version 1 (benchmark)"})
    second = registry.load(2)
    assert isinstance(second, TorchEncoder)
    return second


def _time_backfill(path: Path, encoder: Encoder, limit: int) -> dict[str, Any]:
    """Every entity of the store at ``path`` re-encoded with ``encoder``, ``limit`` per step."""
    store = VersionedVectorStore(path)
    backfiller = Backfiller(store, encoder)
    done = 0
    started = time.perf_counter()
    while not backfiller.complete:
        done += backfiller.step(limit)
    seconds = time.perf_counter() - started
    counts = store.version_counts()
    store.close()
    return {
        "entities": done,
        "chunk": limit,
        "seconds": round(seconds, 2),
        "entities_per_second": round(done / seconds),
        "version_2_counts": {kind: per.get(encoder.version, 0) for kind, per in counts.items()},
    }


def _encoder_recall(path: Path) -> dict[str, Any]:
    """float16 vs float32 recall@10 on the encoder's own vectors: every user of the store
    (up to 1,000) queried against every item."""
    store = VersionedVectorStore(path)
    users = [entity_id for entity_id, _ in zip(store.iter_states("user"), range(1_000), strict=False)]
    items = [entity_id for entity_id, _ in store.iter_states("item")]
    user_rows = np.stack([r[0].vector for r in store.get_records("user", [u for u, _ in users]) if r])
    item_rows = np.stack([r[0].vector for r in store.get_records("item", items) if r])
    store.close()
    return {
        "vectors": f"default encoder v1, {len(item_rows)} items, {len(user_rows)} users, exact inner product",
        "recall": round(_recall_at_10(user_rows, item_rows), 4),
    }


def run_backfill(work_dir: Path, entities: int = 200_000, world: str | None = None) -> dict[str, Any]:
    """Backfill throughput (entities re-encoded per second) on a store filled by the refresher
    (with ``3 * entities`` events of ``world``, if named: see :func:`_fill_store`).

    Torch runs on one thread, as in the worker (``EMBSTREAM_TORCH_THREADS`` defaults to 1).
    """
    torch.set_num_threads(1)
    registry = EncoderRegistry(work_dir / "registry")
    ensure_default_encoder(registry)
    filled = work_dir / "filled"
    shutil.rmtree(filled, ignore_errors=True)
    store = VersionedVectorStore(filled)
    fill = _fill_store(store, registry.load(1), entities, world)
    store.close()
    encoder = _second_version(registry)
    runs = {}
    for limit in (BACKFILL_CHUNK, 10 * BACKFILL_CHUNK):  # the worker's chunk, and a larger one
        copy = work_dir / f"backfill-{limit}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(filled, copy)
        runs[f"chunk_{limit}"] = _time_backfill(copy, encoder, limit)
        shutil.rmtree(copy)
    imported = _imported_side_by_side(work_dir, filled, registry, encoder)
    recall = _encoder_recall(filled)
    shutil.rmtree(filled)
    return {"fill": fill, "backfill": runs, "imported": imported, "float16_recall_at_10_encoder": recall}


def _imported_side_by_side(
    work_dir: Path, filled: Path, registry: EncoderRegistry, builtin: TorchEncoder, rounds: int = 3
) -> dict[str, Any]:
    """The same model served two ways, alternately on copies of one store (chunk of the
    worker's size): the built-in encoder, and its towers exported with ``torch.export`` and
    imported as a version (what ``embstream models import`` stores)."""
    user_tower, item_tower = export_towers(*builtin_towers(builtin.model), builtin.inputs)
    version = registry.save_imported(
        user_tower, item_tower, dim=builtin.dim, contract=builtin.inputs, parent=1
    ).version
    imported = registry.load(version)
    rates: dict[str, list[int]] = {"builtin": [], "imported": []}
    for _ in range(rounds):
        for name, encoder in (("builtin", builtin), ("imported", imported)):
            copy = work_dir / f"backfill-{name}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(filled, copy)
            rates[name].append(_time_backfill(copy, encoder, BACKFILL_CHUNK)["entities_per_second"])
            shutil.rmtree(copy)
    ratios = [round(i / b, 3) for b, i in zip(rates["builtin"], rates["imported"], strict=True)]
    return {
        "note": "version 1's model, built-in vs exported and imported; entities/s per round",
        "entities_per_second": rates,
        "imported_over_builtin": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--backfill-entities", type=int, default=200_000)
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--skip-backfill", action="store_true")
    parser.add_argument(
        "--world",
        choices=sorted(WORLDS),
        help="fill the backfill's store with 3 x --backfill-entities events of this world "
        "(default: a uniform world of that many entities)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="embstream-storage-"))
    result: dict[str, Any] = {"cores": os.cpu_count()}
    try:
        if not args.skip_storage:
            result["storage"] = run_storage(work, args.entities)
        if not args.skip_backfill:
            result["backfill"] = run_backfill(work, args.backfill_entities, args.world)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
