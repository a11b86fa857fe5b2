"""Instant promotes: forward entries in the record format and in reads, the forward fill,
the native backfill by recency that replaces it, the promote gate, and the controller that
drives them (real RocksDB, real registry; no broker)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.aligners import fit_forward, forward_apply
from models.encoder import EncoderConfig, TwoTowerModel
from models.features import UserState
from models.registry import EncoderRegistry
from store import RecordFormatError, VersionedVector, decode_record, encode_record
from store.item_indexes import ItemIndexes
from store.lookup import resolve_many, resolve_matrix
from store.options import StoreOptions
from store.record_scan import locate_entry
from store.vector_store import VersionedVectorStore
from stream.rollout.backfill import RECENCY_TIERS, Backfiller, ForwardFiller
from stream.rollout.controller import RolloutController
from stream.rollout.messages import control_message
from stream.rollout.state import RolloutState
from tests.conftest import wait_until
from tests.stream.test_control import ConstantEncoder

CONFIG = EncoderConfig(dim=16, id_dim=8, buckets=256, hidden=16, history=5)
HOUR_MS = 3_600_000


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _store(tmp_path: Path, **options: object) -> VersionedVectorStore:
    return VersionedVectorStore(tmp_path / "db", StoreOptions(**options))  # type: ignore[arg-type]


def _users(
    store: VersionedVectorStore, ids: list[str], version: int, times_ms: list[int], dim: int = 2
) -> np.ndarray:
    """``ids`` with a state and a native vector of ``version`` written at ``times_ms``."""
    vectors = _unit(np.random.default_rng(len(ids)).standard_normal((len(ids), dim)))
    writer = store.writer()
    for user in ids:
        writer.put_state("user", user, UserState(window=5).to_bytes())
    writer.put_vectors("user", ids, version, vectors, np.asarray(times_ms, dtype=np.int64))
    writer.commit()
    return vectors


def test_a_forward_entry_is_marked_in_format_2_kept_through_splices_and_refused_by_format_1() -> None:
    forward = VersionedVector(2, 5, np.ones(3, dtype=np.float32), forward=True)
    native = VersionedVector(1, 4, np.zeros(3, dtype=np.float32))
    record = encode_record([forward, native], record_format=2)
    decoded = decode_record(record)
    assert [(e.version, e.forward) for e in decoded] == [(2, True), (1, False)]
    span = locate_entry(record, 2)  # the fast path: the newest entry, one-byte version
    assert span is not None and span.forward and span.updated_at_ms == 5 and span.dim == 3
    assert locate_entry(record, 1) == locate_entry(record, 1)._replace(forward=False)
    with pytest.raises(RecordFormatError, match="forward"):
        encode_record([forward], record_format=1)
    with pytest.raises(RecordFormatError, match="16383"):
        encode_record([VersionedVector(1, 1, np.zeros(16_384, dtype=np.float32))], record_format=2)


def test_reads_answer_forward_entries_as_forward_and_the_serving_cache_never_holds_them(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path, serving_cache_mb=8)
    try:
        ids = ["a", "b", "c"]
        _users(store, ids, 1, [10, 10, 10])
        writer = store.writer()
        writer.put_vectors("user", ["a", "b"], 2, np.eye(2, dtype=np.float32), 10, forward=True)
        writer.put_vectors("user", ["c"], 2, np.ones((1, 2), dtype=np.float32), 10)
        writer.commit()
        store.set_serving_version(2)
        assert store.warm_serving_cache() == 1  # only the native one
        for _ in range(2):  # the second time, misses read from RocksDB could have been cached
            answered, rows = resolve_many(store, "user", ids, None)
            assert answered == 2
            assert [(r.id, r.source) for r in rows if r is not None] == [
                ("a", "forward"),
                ("b", "forward"),
                ("c", "native"),
            ]
            matrix = resolve_matrix(store, "user", ids, None)
            assert matrix.sources == ["forward", "forward", "native"] and not matrix.all_native
        assert store.serving_cache is not None and store.serving_cache.held("user") == 1
        writer = store.writer()  # the native backfill replaces a forward entry
        writer.put_vectors("user", ["a"], 2, np.ones((1, 2), dtype=np.float32), 11)
        writer.commit()
        _, rows = resolve_many(store, "user", ["a"], 2)
        assert rows[0] is not None and rows[0].source == "native"
    finally:
        store.close()


def test_the_forward_fill_carries_the_serving_vector_of_every_entity_lacking_the_version(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    try:
        ids = [f"u{n:02d}" for n in range(23)]
        served = _users(store, ids, 1, list(range(1_000, 1_023)))
        writer = store.writer()  # u00-u02 were dual-written at version 2 meanwhile
        writer.put_vectors("user", ids[:3], 2, np.full((3, 2), 0.5, dtype=np.float32), 2_000)
        writer.commit()
        mixing = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
        filler = ForwardFiller(store, 2, 1, lambda rows: _unit(rows @ mixing), source_dim=2)
        steps = 0
        while not filler.complete:
            filler.step(5)
            steps += 1
        assert steps >= 5  # in chunks, with a cursor
        progress = filler.progress()
        assert progress.complete and progress.done == progress.total == 23
        records = store.get_records("user", ids)
        for row, record in enumerate(records):
            assert record is not None
            entry = next(e for e in record if e.version == 2)
            if row < 3:
                assert not entry.forward and entry.updated_at_ms == 2_000  # left alone
            else:
                assert entry.forward and entry.updated_at_ms == 1_000 + row  # the serving time
                np.testing.assert_allclose(entry.vector, _unit(served[row : row + 1] @ mixing)[0])
        assert store.version_counts()["user"] == {1: 23, 2: 23}
    finally:
        store.close()


def test_the_native_backfill_goes_most_recently_active_first_and_replaces_forward_entries(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    try:
        now = int(time.time() * 1000)
        recent = [f"r{n}" for n in range(6)]  # active in the last hour
        today = [f"t{n}" for n in range(6)]  # in the last day
        old = [f"o{n}" for n in range(6)]  # a month ago
        ids = sorted(recent + today + old)  # key order mixes them
        times = {**dict.fromkeys(recent, now - HOUR_MS // 2), **dict.fromkeys(today, now - 5 * HOUR_MS)}
        times.update(dict.fromkeys(old, now - 30 * 24 * HOUR_MS))
        _users(store, ids, 1, [times[user] for user in ids])
        filler = ForwardFiller(store, 9, 1, lambda rows: rows, source_dim=2)
        while not filler.complete:
            filler.step(100)
        backfill = Backfiller(store, ConstantEncoder(), user_window=5, tiers=RECENCY_TIERS)

        def native() -> set[str]:
            records = store.get_records("user", ids)
            return {
                user
                for user, record in zip(ids, records, strict=True)
                if record is not None and any(e.version == 9 and not e.forward for e in record)
            }

        backfill.step(100)  # the first pass: the last hour's users only
        assert native() == set(recent)
        assert backfill.progress()["user"].done == 6 and not backfill.complete
        backfill.step(100)  # the last day's
        assert native() == set(recent + today)
        while not backfill.complete:
            backfill.step(4)
        assert native() == set(ids) and backfill.encoded == 18  # each encoded once
        for user, record in zip(ids, store.get_records("user", ids), strict=True):
            entry = next(e for e in record or [] if e.version == 9)
            assert entry.updated_at_ms == times[user]  # as fresh as the state it encodes
        assert backfill.progress()["user"].done == 18
    finally:
        store.close()


def test_the_item_index_counts_its_forward_items_from_commits_and_from_its_build(tmp_path: Path) -> None:
    store = _store(tmp_path)
    indexes = ItemIndexes(store, dim_of=lambda version: 2)
    try:
        items = [f"i{n:02d}" for n in range(20)]
        writer = store.writer()
        writer.put_vectors("item", items, 1, _unit(np.ones((20, 2))), 1_000)
        writer.commit()
        indexes.track(serving=1, staged=2)
        indexes.start()
        wait_until(lambda: indexes.index(2) is not None)
        filler = ForwardFiller(store, 2, 1, lambda rows: rows, source_dim=2)
        while not filler.complete:
            filler.step(7)
        assert indexes.status()[2].forward_items == 20 and indexes.status()[1].forward_items == 0
        assert len(indexes.index(2) or []) == 20  # searchable at version 2 at once
        writer = store.writer()  # the native backfill replaces five of them
        writer.put_vectors("item", items[:5], 2, _unit(np.ones((5, 2))), 1_000)
        writer.commit()
        assert indexes.status()[2].forward_items == 15
        indexes.stop()
        rebuilt = ItemIndexes(store, dim_of=lambda version: 2)  # a restart: the build's scan
        rebuilt.track(serving=1, staged=2)
        rebuilt.start()
        try:
            wait_until(lambda: rebuilt.index(2) is not None)
            assert rebuilt.status()[2].forward_items == 15
        finally:
            rebuilt.stop()
    finally:
        indexes.stop()
        store.close()


def test_promote_after_a_forward_fill_needs_that_fill_and_the_index_not_the_backfill() -> None:
    state = RolloutState()
    stage = control_message("stage", version=2)
    state.apply(control_message("worker", worker="w1", serving=1))
    state.apply(stage)
    state.apply(control_message("ack", worker="w1", of=stage["id"], command="stage"))
    assert not state.promotable(2)  # acknowledged, nothing reported yet
    for kind, done in (("index", 3), ("forward", 10), ("user", 1), ("item", 0)):
        state.apply(control_message("progress", worker="w1", version=2, kind=kind, done=done, total=10))
    assert not state.promotable(2)  # the index is not built
    state.apply(control_message("progress", worker="w1", version=2, kind="index", done=10, total=10))
    assert state.promotable(2) and not state.backfill_complete(2)
    # a second worker without a forward fill needs its whole backfill
    state.apply(control_message("progress", worker="w2", version=2, kind="user", done=10, total=10))
    state.apply(control_message("progress", worker="w2", version=2, kind="item", done=9, total=10))
    assert not state.promotable(2)
    state.apply(control_message("progress", worker="w2", version=2, kind="item", done=10, total=10))
    assert state.promotable(2)
    state.apply(control_message("stage", version=3, forward=False))
    assert state.staged == 3 and state.forward_fill is False


@pytest.fixture
def registry(tmp_path: Path) -> EncoderRegistry:
    """v1; v2 (child of v1) with a forward transform meeting its ECC; v3 (child of v2) whose
    forward transform fails it."""
    registry = EncoderRegistry(tmp_path / "registry")
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(TwoTowerModel(CONFIG))
    registry.save(models[0])
    rng = np.random.default_rng(0)
    parent = rng.standard_normal((64, 16)).astype(np.float32)
    forward = fit_forward(parent, parent @ rng.standard_normal((16, 16)).astype(np.float32))
    for model, parent_version, ecc in ((models[1], 1, True), (models[2], 2, False)):
        report = {"swappable": True, "forward": {"ecc": ecc}}
        registry.save(
            model,
            parent=parent_version,
            forward=forward,
            files={"report.json": json.dumps(report).encode()},
        )
    return registry


def test_the_controller_fills_forward_promotes_early_and_keeps_the_backfill_going(
    tmp_path: Path, registry: EncoderRegistry
) -> None:
    store = _store(tmp_path)
    try:
        ids = [f"u{n:02d}" for n in range(12)]
        now = int(time.time() * 1000)
        served = _users(store, ids, 1, [now] * len(ids), dim=16)
        controller = RolloutController(registry, store, "w1", user_window=5)
        controller.start(1)
        controller.apply(control_message("stage", version=2))
        assert controller.forward is not None and controller.backfiller is not None
        assert list(controller.progress()) == ["index", "forward", "user", "item"]
        while not controller.forward.complete:
            controller.forward.step(5)
        _, rows = resolve_many(store, "user", ids, 2)
        assert {r.source for r in rows if r is not None} == {"forward"} and None not in rows
        transform = registry.load_forward(2)
        assert transform is not None
        first = rows[0]
        assert first is not None
        np.testing.assert_allclose(first.vector, forward_apply(transform, served[:1])[0], atol=1e-6)
        controller.backfiller.step(4)  # the native backfill has begun, far from done
        controller.apply(control_message("promote", version=2, force=True))
        assert store.serving_version == 2 and controller.forward is None
        assert controller.backfiller is not None and controller.backfiller.encoder.version == 2
        assert list(controller.progress()) == ["user", "item"]  # the native backfill only
        store.close()
        store = _store(tmp_path)  # a restart: the native backfill of the serving version resumes
        again = RolloutController(registry, store, "w1", user_window=5)
        again.state.serving = 2
        again.start(2)
        assert again.backfiller is not None and not again.backfiller.complete
        while not again.backfiller.complete:
            again.backfiller.step(5)
        _, rows = resolve_many(store, "user", ids, 2)
        assert {r.source for r in rows if r is not None} == {"native"}
        # a version whose forward transform fails its ECC, or staged with --no-forward: no fill
        again.apply(control_message("stage", version=3))
        assert again.staged_encoder is not None and again.forward is None
        again.apply(control_message("cancel", version=3))
        again.apply(control_message("rollback", **{"from": 2, "to": 1}))
        again.apply(control_message("stage", version=2, forward=False))
        assert again.staged_encoder is not None and again.forward is None
        # staged again live: the earlier, finished backfill of version 2 is not taken as done
        assert again.backfiller is not None and again.backfiller.progress()["user"].done == 0
    finally:
        store.close()
