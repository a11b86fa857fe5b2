"""Choosing the nearest-neighbour library for per-version item indexes, by measurement.

Item vectors come from the default encoder's item tower (trained as `embstream run` would,
on synthetic data), for N items with random interaction counts; queries are user vectors
from the user tower, for users with 20 random interactions each (popular items more
often). All vectors are L2-normalised, so inner product is cosine. Each candidate indexes the
same vectors and answers the same queries:

- exact search (numpy, one matrix product per query): the reference for recall@10;
- usearch (HNSW), hnswlib (HNSW), faiss-cpu (IndexHNSWFlat), each with M=16,
  ef_construction=200 and ef_search=64.

Measured: build time (2 threads), memory, recall@10 against exact search over 1,000 queries,
single-query latency p50/p99 and queries/s on one thread, and the update rate (re-inserting
vectors of ids already indexed, as the stream does). Writes JSON to stdout (or ``--out``).

    pip install -e '.[bench]'    # usearch, hnswlib, faiss-cpu among the peers
    python -m benchmarks.ann --items 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import emit_results
from models.bootstrap import ensure_default_encoder
from models.features import ITEM_FEATURES
from models.registry import EncoderRegistry
from models.state_batch import EventColumns, ItemCounts, apply_user_events

__all__ = ["run_ann"]

K = 10
M, EF_CONSTRUCTION, EF_SEARCH = 16, 200, 64


def _vectors(items: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    work = Path(tempfile.mkdtemp(prefix="embstream-ann-"))
    registry = EncoderRegistry(work / "registry")
    ensure_default_encoder(registry)
    encoder = registry.load(1)
    rng = np.random.default_rng(seed)
    ids = [f"i{n}" for n in range(items)]
    counts = rng.gamma(0.3, 4.0, size=(items, ITEM_FEATURES))
    item_vectors = np.concatenate(
        [
            encoder.encode_items(ItemCounts(ids[start : start + 50_000], counts[start : start + 50_000]))
            for start in range(0, items, 50_000)
        ]
    ).astype(np.float32)
    per_user = 20
    popular = rng.zipf(1.3, size=queries * per_user) % items
    users = [f"u{n}" for n in range(queries)]
    rows = np.repeat(np.arange(queries), per_user)
    columns = EventColumns(
        [users[row] for row in rows],
        [ids[i] for i in popular],
        rng.integers(0, 4, size=queries * per_user).astype(np.uint8),
        np.full(queries * per_user, np.nan, dtype=np.float32),
        (1_767_000_000_000 + np.arange(queries * per_user) * 1000).astype(np.int64),
    )
    _, histories = apply_user_events(users, [None] * queries, 50, columns, rows)
    return item_vectors, encoder.encode_users(histories).astype(np.float32)


def _exact(items: np.ndarray, queries: np.ndarray, chunk: int = 64) -> np.ndarray:
    found = []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ items.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        found.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(found)


class Candidate:
    name = ""

    def build(self, vectors: np.ndarray) -> None: ...
    def search(self, query: np.ndarray) -> np.ndarray: ...
    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def memory_bytes(self) -> int: ...


class Exact(Candidate):
    name = "exact (numpy)"

    def build(self, vectors: np.ndarray) -> None:
        self.vectors = vectors.copy()

    def search(self, query: np.ndarray) -> np.ndarray:
        scores = self.vectors @ query
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.vectors[ids] = vectors

    def memory_bytes(self) -> int:
        return int(self.vectors.nbytes)


class USearch(Candidate):
    name = "usearch (HNSW)"

    def build(self, vectors: np.ndarray) -> None:
        from usearch.index import Index

        self.index = Index(
            ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=M,
            expansion_add=EF_CONSTRUCTION, expansion_search=EF_SEARCH,
        )  # fmt: skip
        self.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=2)

    def search(self, query: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.search(query, K, threads=1).keys)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        keys = ids.astype(np.uint64)
        self.index.remove(keys)
        self.index.add(keys, vectors, threads=1)

    def memory_bytes(self) -> int:
        return int(self.index.memory_usage)


class HnswLib(Candidate):
    name = "hnswlib (HNSW)"

    def build(self, vectors: np.ndarray) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        self.index.init_index(max_elements=len(vectors), ef_construction=EF_CONSTRUCTION, M=M)
        self.index.add_items(vectors, np.arange(len(vectors)), num_threads=2)
        self.index.set_ef(EF_SEARCH)
        self.index.set_num_threads(1)

    def search(self, query: np.ndarray) -> np.ndarray:
        labels, _ = self.index.knn_query(query, k=K)
        return labels[0]

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_items(vectors, ids)  # an existing label is updated in place

    def memory_bytes(self) -> int:
        path = Path(tempfile.mkdtemp()) / "index.bin"
        self.index.save_index(str(path))
        return path.stat().st_size


class Faiss(Candidate):
    name = "faiss-cpu (IndexHNSWFlat)"

    def build(self, vectors: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(2)
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.add(vectors)
        self.index.hnsw.efSearch = EF_SEARCH
        faiss.omp_set_num_threads(1)

    def search(self, query: np.ndarray) -> np.ndarray:
        _, labels = self.index.search(query[None, :], K)
        return labels[0]

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError("IndexHNSWFlat cannot remove or replace a vector")

    def memory_bytes(self) -> int:
        import faiss

        return len(faiss.serialize_index(self.index))


def _measure(
    candidate: Candidate, items: np.ndarray, queries: np.ndarray, truth: np.ndarray
) -> dict[str, Any]:
    started = time.perf_counter()
    candidate.build(items)
    build_s = time.perf_counter() - started
    latencies, hits = [], 0
    for query, expected in zip(queries, truth, strict=True):
        began = time.perf_counter()
        found = candidate.search(query)
        latencies.append(time.perf_counter() - began)
        hits += len(set(found.tolist()) & set(expected.tolist()))
    latencies_ms = np.array(latencies) * 1000
    result: dict[str, Any] = {
        "build_seconds": round(build_s, 2),
        "memory_mb": round(candidate.memory_bytes() / 2**20, 1),
        "recall_at_10": round(hits / (K * len(queries)), 4),
        "query_p50_ms": round(float(np.percentile(latencies_ms, 50)), 3),
        "query_p99_ms": round(float(np.percentile(latencies_ms, 99)), 3),
        "queries_per_second": round(len(queries) / float(np.sum(latencies))),
    }
    rng = np.random.default_rng(1)
    ids = rng.choice(len(items), size=min(10_000, len(items)), replace=False)
    moved = items[ids] + rng.normal(0, 0.05, size=(len(ids), items.shape[1])).astype(np.float32)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    try:
        began = time.perf_counter()
        for start in range(0, len(ids), 500):  # the stream updates in batches
            candidate.update(ids[start : start + 500], moved[start : start + 500])
        result["updates_per_second"] = round(len(ids) / (time.perf_counter() - began))
    except NotImplementedError as error:
        result["updates_per_second"] = None
        result["updates"] = str(error)
    return result


def run_ann(items: int, queries: int = 1_000) -> dict[str, Any]:
    item_vectors, query_vectors = _vectors(items, queries)
    truth = _exact(item_vectors, query_vectors)
    results: dict[str, Any] = {"items": items, "queries": queries, "dim": int(item_vectors.shape[1]),
                               "cores": os.cpu_count(), "M": M, "ef_construction": EF_CONSTRUCTION,
                               "ef_search": EF_SEARCH, "candidates": {}}  # fmt: skip
    makers: list[Callable[[], Candidate]] = [Exact, USearch, HnswLib, Faiss]
    for make in makers:
        candidate = make()
        try:
            results["candidates"][candidate.name] = _measure(candidate, item_vectors, query_vectors, truth)
        except ImportError as error:
            results["candidates"][candidate.name] = {"skipped": str(error)}
        print(candidate.name, results["candidates"][candidate.name], flush=True, file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit_results(run_ann(args.items, args.queries), args.out)


if __name__ == "__main__":
    main()
