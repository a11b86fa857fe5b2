"""One version's item index: exact agreement where it must, recall where it may be approximate,
and no stale or removed item ever returned, whatever the interleaving of writes and merges."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from store.item_index import IndexTuning, ItemIndex

DIM = 16


def unit_rows(count: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def exact_top(ids: list[str], matrix: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    scores = matrix @ query
    order = sorted(range(len(ids)), key=lambda at: (-scores[at], ids[at]))
    return [ids[at] for at in order[:k]]


def make_index(**tuning: int | float) -> ItemIndex:
    return ItemIndex(1, DIM, IndexTuning(**tuning))  # type: ignore[arg-type]


def test_fresh_rows_are_searched_exactly_before_any_merge() -> None:
    index = make_index(merge_rows=10_000, merge_after_s=3600)
    ids = [f"i{n}" for n in range(300)]
    rows = unit_rows(300)
    index.upsert(ids, rows)
    assert index.fresh_rows == 300 and index.graph_rows == 0
    query = unit_rows(1, seed=9)[0]
    found = index.search(query, 10)
    assert found.ids == exact_top(ids, rows, query, 10)
    assert found.scores == pytest.approx(sorted((rows @ query).tolist(), reverse=True)[:10], abs=1e-5)


def test_after_merging_recall_at_10_stays_high() -> None:
    index = make_index()
    ids = [f"i{n}" for n in range(5_000)]
    rows = unit_rows(5_000)
    index.upsert(ids, rows)
    index.merge_all()
    assert index.fresh_rows == 0 and index.graph_rows == 5_000
    queries = unit_rows(100, seed=3)
    hits = sum(
        len(set(index.search(query, 10).ids) & set(exact_top(ids, rows, query, 10))) for query in queries
    )
    assert hits / 1_000 >= 0.95


def test_an_updated_item_is_found_with_its_new_vector_only() -> None:
    index = make_index()
    ids = [f"i{n}" for n in range(500)]
    rows = unit_rows(500)
    index.upsert(ids, rows)
    index.merge_all()
    target = unit_rows(1, seed=42)[0]
    index.upsert(["i7"], target[None, :])  # i7 now points where the query points
    found = index.search(target, 3)
    assert found.ids[0] == "i7" and found.scores[0] == pytest.approx(1.0, abs=1e-5)
    assert found.ids.count("i7") == 1
    index.merge_all()  # the old graph row is deleted, the new one takes over
    found = index.search(target, 3)
    assert found.ids[0] == "i7" and found.ids.count("i7") == 1
    assert len(index) == 500


def test_discarded_items_never_come_back() -> None:
    index = make_index()
    ids = [f"i{n}" for n in range(400)]
    rows = unit_rows(400)
    index.upsert(ids[:200], rows[:200])
    index.merge_all()
    index.upsert(ids[200:], rows[200:])  # half in the graph, half fresh
    gone = ids[::2]
    index.discard(gone)
    for query in unit_rows(20, seed=5):
        assert not set(index.search(query, 50).ids) & set(gone)
    index.merge_all()
    kept = ids[1::2]
    kept_rows = rows[1::2]
    query = unit_rows(1, seed=6)[0]
    assert index.search(query, 200).ids == exact_top(kept, kept_rows, query, 200)


def test_excluded_ids_are_left_out_and_k_still_filled() -> None:
    index = make_index()
    ids = [f"i{n}" for n in range(1_000)]
    rows = unit_rows(1_000)
    index.upsert(ids, rows)
    index.merge_all()
    query = rows[0]
    best = exact_top(ids, rows, query, 30)
    found = index.search(query, 10, exclude=set(best[:20]))
    assert len(found.ids) == 10 and not set(found.ids) & set(best[:20])


def test_fewer_items_than_k_gives_them_all() -> None:
    index = make_index()
    index.upsert(["a", "b", "c"], unit_rows(3))
    index.merge_step(force=True)
    index.upsert(["d"], unit_rows(1, seed=1))
    assert sorted(index.search(unit_rows(1, seed=2)[0], 10).ids) == ["a", "b", "c", "d"]
    assert index.search(unit_rows(1, seed=2)[0], 10, exclude={"a", "b", "c", "d"}).ids == []


def test_a_load_never_replaces_a_write_committed_after_it_began() -> None:
    index = make_index()
    index.begin_load()
    newer = unit_rows(1, seed=77)
    index.upsert(["i1"], newer)  # committed after the scan began
    index.discard(["i2"])  # evicted after the scan began
    scanned = unit_rows(3, seed=1)
    assert index.load(["i1", "i2", "i3"], scanned) == 1
    index.end_load()
    index.merge_all()
    assert len(index) == 2
    assert index.search(newer[0], 1).ids == ["i1"]
    assert index.search(newer[0], 1).scores[0] == pytest.approx(1.0, abs=1e-5)
    assert "i2" not in index


def test_a_write_during_a_merge_keeps_the_newer_vector() -> None:
    index = make_index(merge_rows=1)
    index.upsert(["x"], unit_rows(1, seed=1))
    real_add = index._add_to_graph
    newer = unit_rows(1, seed=2)

    def add_then_write(vectors: np.ndarray, labels: list[int], threads: int | None = None) -> None:
        real_add(vectors, labels, threads)
        index.upsert(["x"], newer)  # lands between the add and the merge's bookkeeping

    index._add_to_graph = add_then_write  # type: ignore[method-assign]
    assert index.merge_step(force=True) == 0  # the moved copy was stale
    index._add_to_graph = real_add  # type: ignore[method-assign]
    assert index.fresh_rows == 1
    found = index.search(newer[0], 5)
    assert found.ids == ["x"] and found.scores[0] == pytest.approx(1.0, abs=1e-5)
    index.merge_all()
    assert index.search(newer[0], 5).ids == ["x"] and index.graph_rows == 1


def test_queries_beside_merges_and_writes_see_only_current_vectors() -> None:
    """Stress: a merger thread and a writer thread against queries; every answer holds each
    id once, only ids never discarded, and the graph grows through resizes meanwhile."""
    index = make_index(merge_rows=64, merge_chunk=256)
    rng = np.random.default_rng(0)
    ids = [f"i{n}" for n in range(3_000)]
    discarded = {f"i{n}" for n in range(0, 3_000, 10)}
    stop = threading.Event()
    errors: list[BaseException] = []

    def merge() -> None:
        while not stop.is_set():
            index.merge_step()

    def write() -> None:
        try:
            for start in range(0, 3_000, 100):
                index.upsert(ids[start : start + 100], unit_rows(100, seed=start))
                index.discard([i for i in ids[start : start + 100] if i in discarded])
                index.upsert(ids[start : start + 50], unit_rows(50, seed=start + 1))
                index.discard([i for i in ids[start : start + 50] if i in discarded])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=merge), threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    answers = 0
    while threads[1].is_alive() or answers < 50:
        found = index.search(unit_rows(1, seed=int(rng.integers(1 << 30)))[0], 20)
        assert len(found.ids) == len(set(found.ids))
        answers += 1
    threads[1].join()
    # Writes are over, the merger still runs: discarded ids are gone from every answer.
    for _ in range(200):
        found = index.search(unit_rows(1, seed=int(rng.integers(1 << 30)))[0], 20)
        assert len(found.ids) == 20 == len(set(found.ids))
        assert not set(found.ids) & discarded
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    index.merge_all()
    assert len(index) == 3_000 - len(discarded)
    assert index.graph_rows == 3_000 - len(discarded)


def test_updates_do_not_grow_the_graph_without_bound() -> None:
    """Every update deletes a graph row; once deleted rows outnumber live ones a compaction
    copies the live rows into a new graph, and answers stay the same."""
    index = make_index(compact_min_deleted=500)
    ids = [f"i{n}" for n in range(400)]
    rows = unit_rows(400)
    for round_ in range(6):
        rows = unit_rows(400, seed=round_)
        index.upsert(ids, rows)
        index.merge_all()
        if index.compact_due():
            index.compact()
    assert index.compactions >= 1
    assert index._graph.get_current_count() <= 2 * 400 + 500
    assert len(index) == 400 == index.graph_rows
    query = unit_rows(1, seed=99)[0]
    assert index.search(query, 20).ids == exact_top(ids, rows, query, 20)


def test_deletes_while_compacting_are_kept_on_the_new_graph() -> None:
    index = make_index(compact_min_deleted=1)
    ids = [f"i{n}" for n in range(300)]
    rows = unit_rows(300)
    index.upsert(ids, rows)
    index.merge_all()
    index.upsert(ids[:200], unit_rows(200, seed=5))
    index.merge_all()
    real_get = index._graph.get_items
    done: list[bool] = []

    class Spy:
        """Deletes an item in the middle of the copy (after its row was copied)."""

        def __getattr__(self, name: str) -> object:
            return getattr(graph, name)

        def get_items(self, labels: list[int]) -> object:
            found = real_get(labels)
            if not done:
                done.append(True)
                threading.Thread(target=index.discard, args=(["i250"],)).start()
                time.sleep(0.2)
            return found

    graph = index._graph
    index._graph = Spy()  # type: ignore[assignment]
    index.compact()
    assert "i250" not in index
    for query in unit_rows(20, seed=3):
        assert "i250" not in index.search(query, 300).ids
    assert len(index.search(unit_rows(1, seed=4)[0], 400).ids) == 299


def test_a_compaction_beside_a_bulk_load_keeps_every_loaded_item() -> None:
    """A load's rows are recorded before a compaction can copy the graph, so none is lost."""
    index = make_index(compact_min_deleted=1)
    index.upsert([f"old{n}" for n in range(200)], unit_rows(200, seed=1))
    index.merge_all()
    index.upsert([f"old{n}" for n in range(200)], unit_rows(200, seed=2))  # 200 superseded rows
    index.merge_all()
    index.begin_load()
    ids = [f"i{n}" for n in range(2_000)]
    rows = unit_rows(2_000, seed=3)
    stop = threading.Event()

    def compact_repeatedly() -> None:
        while not stop.is_set():
            index.compact()

    compactor = threading.Thread(target=compact_repeatedly)
    compactor.start()
    try:
        for start in range(0, 2_000, 50):
            index.load(ids[start : start + 50], rows[start : start + 50])
    finally:
        stop.set()
        compactor.join()
    index.end_load()
    index.compact()
    assert len(index) == 2_200 and index.graph_rows == 2_200
    for at in (0, 777, 1_999):
        assert index.search(rows[at], 1).ids == [ids[at]]
