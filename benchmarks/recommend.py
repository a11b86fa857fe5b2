"""The product's item index (store/item_index.py) measured: the rows the retrieval issue asks for.

Same vectors as ``python -m benchmarks.ann`` (the default encoder's item tower for N items,
user-tower queries). For one :class:`~store.item_index.ItemIndex`, as the worker uses it:

- build: a bulk load from the store's scan (10,000 rows per call, as at start-up), and the
  resident memory it added (graph and id maps);
- recall@10 against exact search, single-query p50/p99 and queries/s, graph only;
- the same with 10,000 items just updated (moved vectors, in the exact fresh segment);
- the update rate: upserts per second (the commit path) and rows moved into the graph per
  second by the merger alone; then, for a second drift of the same items, query p50/p99
  from a thread querying without pause while the merger runs (searches go first, so the
  merger is slower then);
- recall@10 of a graph built from scratch on the updated vectors, for reference;
- ``--ingest N``: worker throughput with item indexes on (the default) and off, alternating,
  each on the same N events in one broker.

    python -m benchmarks.recommend --items 100000 [--ingest 200000] [--no-rebuild] [--out FILE]
    python -m benchmarks.recommend --items 100000 --no-rebuild --tuning ef_construction=100
    python -m benchmarks.recommend --items 0 --ingest 200000    # the ingest cost only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import emit_results
from benchmarks.ann import K, _exact, _vectors
from store.item_index import IndexTuning, ItemIndex

__all__ = ["run_recommend"]


def _queries(index: ItemIndex, ids: list[str], queries: np.ndarray, truth: list[set[str]]) -> dict[str, Any]:
    latencies, hits = [], 0
    for query, expected in zip(queries, truth, strict=True):
        began = time.perf_counter()
        found = index.search(query, K)
        latencies.append(time.perf_counter() - began)
        hits += len(set(found.ids) & expected)
    latencies_ms = np.array(latencies) * 1000
    return {
        "recall_at_10": round(hits / (K * len(queries)), 4),
        "query_p50_ms": round(float(np.percentile(latencies_ms, 50)), 3),
        "query_p99_ms": round(float(np.percentile(latencies_ms, 99)), 3),
        "queries_per_second": round(len(queries) / float(np.sum(latencies))),
    }


def _rss_mb() -> float:
    """This process's resident memory, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _truth(ids: list[str], items: np.ndarray, queries: np.ndarray) -> list[set[str]]:
    return [{ids[n] for n in row} for row in _exact(items, queries).tolist()]


def run_recommend(
    items: int,
    queries: int = 1_000,
    updated: int = 10_000,
    rebuild: bool = True,
    tuning: IndexTuning | None = None,
) -> dict[str, Any]:
    item_vectors, query_vectors = _vectors(items, queries)
    ids = [f"i{n}" for n in range(items)]
    tuning = tuning or IndexTuning()
    rss_before = _rss_mb()
    index = ItemIndex(1, item_vectors.shape[1], tuning, capacity=items)
    result: dict[str, Any] = {"items": items, "queries": queries, "dim": int(item_vectors.shape[1]),
                              "cores": os.cpu_count(), "tuning": tuning.__dict__}  # fmt: skip
    began = time.perf_counter()
    index.begin_load()
    for start in range(0, items, 10_000):
        index.load(ids[start : start + 10_000], item_vectors[start : start + 10_000])
    index.end_load()
    result["build_seconds"] = round(time.perf_counter() - began, 2)
    result["index_memory_mb"] = round(_rss_mb() - rss_before, 1)  # resident growth while building
    result["build_items_per_second"] = round(items / (time.perf_counter() - began))
    print("built", result["build_seconds"], "s", file=sys.stderr, flush=True)
    result["graph_only"] = _queries(index, ids, query_vectors, _truth(ids, item_vectors, query_vectors))
    print("graph only", result["graph_only"], file=sys.stderr, flush=True)

    rng = np.random.default_rng(1)
    picked = rng.choice(items, size=min(updated, items), replace=False)
    # an item's vector drifts as its counts change: a small step, kept on the unit sphere
    moved = item_vectors[picked] + rng.normal(0, 0.01, size=(len(picked), item_vectors.shape[1]))
    moved = (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)
    began = time.perf_counter()
    for start in range(0, len(picked), 500):  # as the worker's commits deliver them
        index.upsert([ids[n] for n in picked[start : start + 500]], moved[start : start + 500])
    upsert_s = time.perf_counter() - began
    current = item_vectors.copy()
    current[picked] = moved
    truth = _truth(ids, current, query_vectors)
    result["with_fresh_segment"] = {
        "fresh_items": index.fresh_rows,
        **_queries(index, ids, query_vectors, truth),
    }
    print("with fresh", result["with_fresh_segment"], file=sys.stderr, flush=True)

    began = time.perf_counter()
    index.merge_all()  # alone: the merger's own rate
    merge_s = time.perf_counter() - began
    # The same items drift once more, merged while one thread queries without pause.
    moved = moved + rng.normal(0, 0.01, size=moved.shape)
    moved = (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)
    for start in range(0, len(picked), 500):
        index.upsert([ids[n] for n in picked[start : start + 500]], moved[start : start + 500])
    current[picked] = moved
    truth = _truth(ids, current, query_vectors)
    latencies: list[float] = []
    done = threading.Event()

    def merge() -> None:
        index.merge_all()
        done.set()

    merger = threading.Thread(target=merge)
    began = time.perf_counter()
    merger.start()
    at = 0
    while not done.is_set():
        query = query_vectors[at % queries]
        started = time.perf_counter()
        index.search(query, K)
        latencies.append(time.perf_counter() - started)
        at += 1
    merger.join()
    busy_merge_s = time.perf_counter() - began
    beside = np.array(latencies) * 1000
    result["updates"] = {
        "items": len(picked),
        "upserts_per_second": round(len(picked) / upsert_s),
        "merged_into_graph_per_second": round(len(picked) / merge_s),
        "merged_per_second_beside_nonstop_queries": round(len(picked) / busy_merge_s),
        "queries_while_merging": len(latencies),
        "query_p50_ms_while_merging": round(float(np.percentile(beside, 50)), 3),
        "query_p99_ms_while_merging": round(float(np.percentile(beside, 99)), 3),
    }
    result["after_merge"] = _queries(index, ids, query_vectors, truth)
    print("updates", result["updates"], result["after_merge"], file=sys.stderr, flush=True)
    if not rebuild:
        return result
    rebuilt = ItemIndex(1, item_vectors.shape[1], tuning, capacity=items)  # the same vectors, from scratch
    rebuilt.begin_load()
    for start in range(0, items, 10_000):
        rebuilt.load(ids[start : start + 10_000], current[start : start + 10_000])
    rebuilt.end_load()
    result["rebuilt_from_scratch"] = _queries(rebuilt, ids, query_vectors, truth)
    return result


def run_ingest_cost(events: int, rounds: int = 3) -> dict[str, Any]:
    """Worker throughput with item indexes on (default) and off, alternating."""
    from benchmarks.ingest import produce_events, run_ingest
    from models.bootstrap import ensure_default_encoder
    from models.registry import EncoderRegistry
    from stream.kafka.broker import EmbeddedBroker

    work = Path(tempfile.mkdtemp(prefix="embstream-bench-"))
    registry = work / "registry"
    ensure_default_encoder(EncoderRegistry(registry))
    runs: dict[str, list[int]] = {"indexes_on": [], "indexes_off": []}
    with EmbeddedBroker() as broker:
        topic = "bench-recommend-ingest"
        produce_events(broker.bootstrap, topic, events, 4)
        for round_ in range(rounds):
            for name, versions in (("indexes_off", 0), ("indexes_on", 2)):
                measured = run_ingest(
                    broker.bootstrap, topic, events, partitions=4, registry=registry,
                    work_dir=work / f"{name}-{round_}", index_versions=versions,
                )  # fmt: skip
                runs[name].append(measured["events_per_second"])
                print(name, measured["events_per_second"], file=sys.stderr, flush=True)
    on, off = np.mean(runs["indexes_on"]), np.mean(runs["indexes_off"])
    return {"events": events, "events_per_second": runs, "ratio_on_to_off": round(float(on / off), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--ingest", type=int, default=0, metavar="EVENTS")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the from-scratch reference build")
    parser.add_argument(
        "--tuning",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="IndexTuning fields to change, e.g. ef_construction=100 connectivity=12",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    changed = {
        name: type(getattr(IndexTuning(), name))(value)
        for name, value in (t.split("=", 1) for t in args.tuning)
    }
    tuning = IndexTuning(**changed)
    result = (
        run_recommend(args.items, args.queries, rebuild=not args.no_rebuild, tuning=tuning)
        if args.items
        else {}
    )
    if args.ingest:
        result["ingest_cost"] = run_ingest_cost(args.ingest)
    emit_results(result, args.out)


if __name__ == "__main__":
    main()
