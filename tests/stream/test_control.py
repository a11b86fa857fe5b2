"""The control-topic fold and the backfill, without a broker (the backfill on real RocksDB)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from models.features import ItemInput, ItemState, UserInput, UserState
from store.item_index import IndexTuning
from store.item_indexes import ItemIndexes
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore
from stream.rollout.backfill import Backfiller, fill_missing
from stream.rollout.controller import RolloutController
from stream.rollout.messages import control_message, decode_control
from stream.rollout.state import RolloutState
from tests.conftest import wait_until


def _fold(messages: list[dict]) -> RolloutState:
    state = RolloutState()
    for message in messages:
        state.apply(message)
    return state


def test_a_rollout_folds_to_the_same_state_however_often_it_is_replayed() -> None:
    log = [
        control_message("worker", worker="w1", serving=1),
        control_message("stage", version=2, rate=None),
        control_message("progress", worker="w1", version=2, kind="user", done=5, total=5),
        control_message("progress", worker="w1", version=2, kind="item", done=3, total=3),
        control_message("promote", version=2),
    ]
    once = _fold(log)
    assert (once.serving, once.staged, once.previous) == (2, None, 1)
    twice = _fold(log + log)  # every message applied a second time changes nothing
    assert (twice.serving, twice.staged, twice.previous) == (2, None, 1)
    rolled = _fold([*log, control_message("rollback", **{"from": 2, "to": 1})])
    assert (rolled.serving, rolled.previous) == (1, None)
    stale = _fold([*log, control_message("rollback", **{"from": 7, "to": 1})])
    assert stale.serving == 2  # a rollback of another serving version is ignored


def test_promote_needs_the_staged_version_and_backfill_counts_every_worker() -> None:
    state = _fold([control_message("worker", worker="w1", serving=1), control_message("promote", version=3)])
    assert state.serving == 1  # nothing staged: ignored
    state.apply(control_message("stage", version=3))
    state.apply(control_message("progress", worker="w1", version=3, kind="user", done=4, total=4))
    state.apply(control_message("progress", worker="w1", version=3, kind="item", done=4, total=4))
    state.apply(control_message("progress", worker="w2", version=3, kind="user", done=1, total=4))
    assert not state.backfill_complete(3)
    state.apply(control_message("progress", worker="w2", version=3, kind="user", done=4, total=4))
    state.apply(control_message("progress", worker="w2", version=3, kind="item", done=2, total=2))
    assert state.backfill_complete(3)
    state.apply(control_message("cancel", version=3))
    assert state.staged is None


def test_a_worker_that_acknowledged_the_stage_but_has_not_reported_holds_promote_back() -> None:
    """With several workers, the first complete report must not let promote through while
    another worker that took the stage has not reported yet."""
    stage = control_message("stage", version=2)
    state = _fold([control_message("worker", worker="w1", serving=1), stage])
    for worker in ("w1", "w2"):
        state.apply(control_message("ack", worker=worker, of=stage["id"], command="stage"))
    for kind in ("user", "item"):
        state.apply(control_message("progress", worker="w1", version=2, kind=kind, done=3, total=3))
    assert not state.backfill_complete(2)  # w2 acknowledged and is still silent
    for kind in ("user", "item"):
        state.apply(control_message("progress", worker="w2", version=2, kind=kind, done=3, total=3))
    assert state.backfill_complete(2)
    other = control_message("stage", version=4)
    state.apply(other)  # acks of another stage command do not count for version 2
    state.apply(control_message("ack", worker="w3", of=other["id"], command="stage"))
    assert state.backfill_complete(2)


def test_a_worker_reporting_an_item_index_holds_promote_back_until_it_is_built() -> None:
    stage = control_message("stage", version=2)
    state = _fold([control_message("worker", worker="w1", serving=1), stage])
    for kind in ("user", "item"):
        state.apply(control_message("progress", worker="w1", version=2, kind=kind, done=3, total=3))
    state.apply(control_message("progress", worker="w1", version=2, kind="index", done=1, total=3))
    assert not state.backfill_complete(2)
    state.apply(control_message("progress", worker="w1", version=2, kind="index", done=3, total=3))
    assert state.backfill_complete(2)
    # a worker with indexes off reports no "index": users and items suffice for it
    for kind in ("user", "item"):
        state.apply(control_message("progress", worker="w2", version=2, kind=kind, done=3, total=3))
    assert state.backfill_complete(2)


def test_malformed_control_messages_are_not_applied() -> None:
    assert decode_control(b"nope") is None and decode_control(b"[]") is None
    assert decode_control(b'{"op": 3}') is None
    assert decode_control(b'{"op": "stage", "version": 2}') == {"op": "stage", "version": 2}


class ConstantEncoder:
    version = 9
    dim = 2

    def encode_users(self, inputs: Sequence[UserInput]) -> np.ndarray:
        return np.ones((len(inputs), 2), dtype=np.float32)

    def encode_items(self, inputs: Sequence[ItemInput]) -> np.ndarray:
        return np.full((len(inputs), 2), 2.0, dtype=np.float32)


def test_backfill_resumes_from_its_cursor_after_a_restart(tmp_path: Path) -> None:
    store = VersionedVectorStore(tmp_path / "db")
    writer = store.writer()
    for n in range(25):
        writer.put_state("user", f"u{n:02d}", UserState().to_bytes())
    writer.commit()
    first = Backfiller(store, ConstantEncoder())
    assert first.step(10) == 10 and first.step(10) == 10
    assert first.progress()["user"].done == 20 and not first.complete
    store.close()
    store = VersionedVectorStore(tmp_path / "db")  # a restart
    again = Backfiller(store, ConstantEncoder())
    assert again.progress()["user"].done == 20
    assert again.step(10) == 5  # only the rest, and users are now complete
    while not again.complete:
        again.step(10)
    assert again.progress()["user"].done == 25 and again.progress()["item"].complete
    assert store.version_counts()["user"] == {9: 25}
    store.close()


def test_a_store_that_missed_a_rollout_fills_the_serving_version_once(tmp_path: Path) -> None:
    """A scale-out worker that was down while version 8 was rolled out holds its entities
    at version 7 only: every one without a fresh native vector of 8 is encoded at 8, and a
    second call finds nothing to do."""
    store = VersionedVectorStore(tmp_path / "db", StoreOptions(keep_versions=3))
    try:
        writer = store.writer()
        ids = [f"u{n}" for n in range(25)]
        for user in ids:
            state = UserState(window=5)
            state.add("i1", 1, None, 1_000)
            writer.put_state("user", user, state.to_bytes())
        writer.put_vectors("user", ids, 7, np.ones((25, 2), np.float32), 1_000)
        writer.put_vectors("user", ids[:5], 8, np.ones((5, 2), np.float32), 1_000)  # updated since
        writer.put_vectors("user", ids[5:7], 8, np.ones((2, 2), np.float32), 900)  # older than v7's
        writer.commit()
        encoder = ConstantEncoder()
        encoder.version = 8
        # the 5 native and fresh ones are left alone; the 2 stale ones are encoded again
        assert fill_missing(store, encoder, user_window=5, chunk=7) == 20
        assert store.version_counts()["user"][8] == 25
        assert fill_missing(store, encoder, user_window=5) == 0
        assert store.get_meta("fill:8:user") is None  # its progress is not left behind
    finally:
        store.close()


def test_a_staged_version_is_complete_only_once_its_item_index_is_built(tmp_path: Path) -> None:
    """The controller's progress adds an "index" kind: complete when the backfill has
    written every item and the staged version's index holds them in its graph."""
    store = VersionedVectorStore(tmp_path / "db")
    indexes = ItemIndexes(
        store, dim_of=lambda version: 2, tuning=IndexTuning(merge_chunk=10, merge_after_s=3600)
    )
    try:
        writer = store.writer()
        for n in range(30):
            writer.put_state("item", f"i{n:02d}", ItemState().to_bytes())
        writer.commit()
        controller = RolloutController(cast(Any, None), store, "w1", indexes=indexes)
        controller.backfiller = Backfiller(store, ConstantEncoder())
        indexes.track(serving=1, staged=9)
        indexes.start()
        while not controller.backfiller.complete:
            controller.backfiller.step(100)
        index = wait_until(lambda: indexes.index(9))
        assert len(index) == 30 and index.fresh_rows > 10  # written, not yet merged
        assert not controller.backfill_complete and not controller.progress()["index"].complete
        messages = controller.progress_messages()
        assert [m["kind"] for m in messages] == ["index", "user", "item"]  # the index first
        index.merge_all()
        assert controller.backfill_complete
        assert controller.describe()["backfill"]["index"] == {"done": 30, "total": 30, "complete": True}
    finally:
        indexes.stop()
        store.close()


def test_a_worker_without_indexes_reports_its_index_as_nothing_to_do(tmp_path: Path) -> None:
    """0 of 0: an index row left by an earlier run with indexes on cannot hold promote."""
    store = VersionedVectorStore(tmp_path / "db")
    try:
        controller = RolloutController(cast(Any, None), store, "w1")
        controller.backfiller = Backfiller(store, ConstantEncoder())
        while not controller.backfiller.complete:
            controller.backfiller.step(10)
        index = controller.progress()["index"]
        assert (index.done, index.total, index.complete) == (0, 0, True)
        assert controller.backfill_complete
    finally:
        store.close()
