"""Queries beside inserts: does a nearest-neighbour library answer queries from one thread
while another thread inserts? (What decided between hnswlib and usearch for item indexes.)

For each library: 10,000 random unit vectors indexed, then one thread inserts N more while a
second thread queries without pause and a third spins in plain Python (does the insert
release the GIL?). Reports the insert's time, the queries answered meanwhile and the insert's
time alone, as JSON.

    python -m benchmarks.ann_concurrency [--rows 5000]
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import emit_results

__all__ = ["run_concurrency"]

DIM = 64


def _library(name: str, base: np.ndarray) -> tuple[Any, Any]:
    """(insert(rows, first_label), query(vector)) for a fresh index holding ``base``."""
    if name == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=DIM)
        index.init_index(max_elements=200_000, M=16, ef_construction=200)
        index.set_ef(64)
        index.add_items(base, np.arange(len(base)), num_threads=1)

        def insert(rows: np.ndarray, first: int) -> None:
            index.add_items(rows, np.arange(first, first + len(rows)), num_threads=1)

        return insert, lambda vector: index.knn_query(vector, k=10, num_threads=1)
    from usearch.index import Index

    index = Index(ndim=DIM, metric="ip", dtype="f32", connectivity=16, expansion_add=200, expansion_search=64)
    index.add(np.arange(len(base), dtype=np.uint64), base, threads=1)

    def insert_usearch(rows: np.ndarray, first: int) -> None:
        index.add(np.arange(first, first + len(rows), dtype=np.uint64), rows, threads=1)

    return insert_usearch, lambda vector: index.search(vector, 10, threads=1)


def _measure(insert: Any, query: Any, vectors: np.ndarray, rows: int) -> dict[str, Any]:
    began = time.perf_counter()
    insert(vectors[10_000 : 10_000 + rows], 10_000)
    alone = time.perf_counter() - began
    stop = threading.Event()
    counts = {"queries": 0, "python_loops": 0}

    def querying() -> None:
        while not stop.is_set():
            query(vectors[counts["queries"] % 10_000])
            counts["queries"] += 1

    def spinning() -> None:
        while not stop.is_set():
            counts["python_loops"] += 1

    threads = [threading.Thread(target=querying), threading.Thread(target=spinning)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    insert(vectors[10_000 + rows :], 10_000 + rows)
    beside = time.perf_counter() - began
    stop.set()
    for thread in threads:
        thread.join()
    return {
        "insert_alone_seconds": round(alone, 2),
        "insert_beside_queries_seconds": round(beside, 2),
        "queries_answered_meanwhile": counts["queries"],
        "python_loop_iterations_meanwhile": counts["python_loops"],
    }


def run_concurrency(rows: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10_000 + 2 * rows, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    results: dict[str, Any] = {"rows_inserted": rows, "indexed_before": 10_000, "dim": DIM}
    for name in ("hnswlib", "usearch"):
        try:
            insert, query = _library(name, vectors[:10_000])
        except ImportError as error:
            results[name] = {"skipped": str(error)}
            continue
        results[name] = _measure(insert, query, vectors, rows)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit_results(run_concurrency(args.rows), args.out)


if __name__ == "__main__":
    main()
