"""Poison records on a real RocksDB store: an event that makes the write path raise is
dead-lettered and the batch around it applied; a record that kills the worker twice is
quarantined at the next start."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.features import ItemInput, UserInput, UserState
from store.errors import StoreDamagedError
from store.vector_store import VersionedVectorStore
from stream.ingest.outbox import decode_outbox
from stream.ingest.poison import POISON_CRASHED, isolate
from stream.ingest.refresher import ConsumedRecord, EmbeddingRefresher

NOW = 1_800_000_000_000


class Died(BaseException):
    """Stands for the process dying: nothing above the refresher catches it."""


class TrapEncoder:
    """Encodes like a plain function of the input, but raises ``error`` for a user named
    ``trap`` (``ValueError`` by default; :class:`Died` plays a crash)."""

    version = 1
    dim = 2

    def __init__(self, error: type[BaseException] = ValueError) -> None:
        self.error = error
        self.calls = 0

    def encode_users(self, inputs: Sequence[UserInput]) -> np.ndarray:
        self.calls += 1
        if any(user.user_id == "trap" for user in inputs):
            raise self.error("the encoder cannot take this user")
        return np.array([[len(user.item_ids), 1] for user in inputs], dtype=np.float32).reshape(-1, 2)

    def encode_items(self, inputs: Sequence[ItemInput]) -> np.ndarray:
        return np.array([[sum(item.features), 0] for item in inputs], dtype=np.float32).reshape(-1, 2)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "db"


def _record(offset: int, user: str, partition: int = 0) -> ConsumedRecord:
    value = orjson.dumps({"user_id": user, "item_id": f"i{offset}", "type": "click", "ts": NOW - 500})
    return ConsumedRecord("interactions", partition, offset, user.encode(), value, NOW - 1000)


def _refresher(store: VersionedVectorStore, encoder: TrapEncoder) -> EmbeddingRefresher:
    return EmbeddingRefresher(store, encoder, updates_topic="updates", dlq_topic="dlq", clock_ms=lambda: NOW)


def _dead_letters(store: VersionedVectorStore) -> list[tuple[bytes | None, dict[str, bytes]]]:
    pending = store.pending_outbox()
    messages = decode_outbox(pending) if pending else []
    return [(m.key, dict(m.headers)) for m in messages if m.topic == "dlq"]


def test_isolate_finds_exactly_the_failing_rows_by_bisection() -> None:
    bad = {3, 17, 18}
    calls = []

    def run(rows: Sequence[int] | None) -> list[int]:
        chosen = list(range(40)) if rows is None else list(rows)
        calls.append(len(chosen))
        if bad & set(chosen):
            raise KeyError("bad row")
        return chosen

    result, poison = isolate(run, 40)
    assert sorted(poison) == sorted(bad)
    assert set(poison.values()) == {"poison: KeyError"}
    assert result == [row for row in range(40) if row not in bad]
    assert len(calls) < 40  # bisection, not one run per row


def test_isolate_raises_a_failure_of_the_machine_at_once() -> None:
    def run(rows: Sequence[int] | None) -> None:
        raise StoreDamagedError("a block failed its checksum")

    with pytest.raises(StoreDamagedError):
        isolate(run, 10)


def test_an_event_the_encoder_cannot_take_is_dead_lettered_and_the_batch_applied(data_dir: Path) -> None:
    store = VersionedVectorStore(data_dir)
    try:
        refresher = _refresher(store, TrapEncoder())
        records = [_record(0, "a"), _record(1, "trap"), _record(2, "b"), _record(3, "a")]
        outcome = refresher.process(records)
        assert outcome.applied == 3
        assert outcome.rejected == {"poison: ValueError": 1}
        assert [(key, headers["error"]) for key, headers in _dead_letters(store)] == [
            (b"trap", b"poison: ValueError")
        ]
        assert _dead_letters(store)[0][1]["source.offset"] == b"1"
        states = store.get_states("user", ["a", "b", "trap"])
        assert UserState.from_bytes(states[0]).count == 2 and UserState.from_bytes(states[1]).count == 1
        assert states[2] is None  # nothing of the poisoned event was written
        assert store.get_offset("interactions", 0) == 4
        assert store.get_record("user", "a") is not None
    finally:
        store.close()


def test_a_record_that_kills_the_worker_twice_is_quarantined_at_the_next_start(data_dir: Path) -> None:
    records = [_record(10, "a"), _record(11, "b"), _record(12, "trap"), _record(13, "c")]
    # First run: the whole batch dies.
    store = VersionedVectorStore(data_dir)
    with pytest.raises(Died):
        _refresher(store, TrapEncoder(Died)).process(records)
    store.close()
    # Second run: each record is tried alone first; the worker dies on offset 12 only.
    store = VersionedVectorStore(data_dir)
    refresher = _refresher(store, TrapEncoder(Died))
    assert [[r.offset for r in batch] for batch in refresher.plan(records)] == [[10, 11, 12, 13]]
    with pytest.raises(Died):
        refresher.process(records)
    assert store.get_offset("interactions", 0) is None  # rehearsals write nothing
    store.close()
    # Third run: the record that killed it twice is quarantined, the rest applied at once.
    store = VersionedVectorStore(data_dir)
    try:
        refresher = _refresher(store, TrapEncoder(Died))
        outcome = refresher.process(records)
        assert outcome.quarantined == 1 and outcome.rejected == {POISON_CRASHED: 1} and outcome.applied == 3
        assert [headers["error"].decode() for _, headers in _dead_letters(store)] == [POISON_CRASHED]
        assert store.get_offset("interactions", 0) == 14
        states = store.get_states("user", ["a", "b", "trap", "c"])
        assert [None if s is None else UserState.from_bytes(s).count for s in states] == [1, 1, None, 1]
        assert len(refresher.plan([_record(14, "d"), _record(15, "e")])) == 1
        assert store.get_meta("inflight") is None
    finally:
        store.close()


class BatchKiller(TrapEncoder):
    """Dies on any batch of more than two users: no record alone is the trouble."""

    def encode_users(self, inputs: Sequence[UserInput]) -> np.ndarray:
        if len(inputs) > 2:
            raise Died("the batch as a whole")
        return super().encode_users(inputs)


def test_a_batch_that_kills_the_worker_as_a_whole_is_applied_one_record_per_batch(data_dir: Path) -> None:
    records = [_record(n, f"u{n}") for n in range(5)]
    for _ in range(2):  # the batch, then the batch again after each record survived alone
        store = VersionedVectorStore(data_dir)
        with pytest.raises(Died):
            _refresher(store, BatchKiller()).process(records)
        store.close()
    store = VersionedVectorStore(data_dir)
    try:
        refresher = _refresher(store, BatchKiller())
        batches = refresher.plan(records)
        assert [[r.offset for r in batch] for batch in batches] == [[0], [1], [2], [3], [4]]
        outcomes = [refresher.process(batch) for batch in batches]
        assert sum(o.applied for o in outcomes) == 5 and not any(o.rejected for o in outcomes)
        assert store.get_offset("interactions", 0) == 5
    finally:
        store.close()


def test_one_death_alone_quarantines_nothing(data_dir: Path) -> None:
    """A worker killed mid-batch (by an operator, say) tries each record alone, then applies
    the batch, and loses nothing."""
    records = [_record(0, "a"), _record(1, "b"), _record(2, "c")]
    store = VersionedVectorStore(data_dir)
    with pytest.raises(Died):
        _refresher(store, TrapEncoder(Died)).process([*records, _record(3, "trap")])
    store.close()
    store = VersionedVectorStore(data_dir)
    try:
        refresher = _refresher(store, TrapEncoder())
        encoder = refresher.encoders()[0]
        assert isinstance(encoder, TrapEncoder)
        outcomes = [refresher.process(batch) for batch in refresher.plan(records)]
        assert len(outcomes) == 1 and outcomes[0].applied == 3 and not outcomes[0].rejected
        assert encoder.calls == 4  # three rehearsals, then the batch
        assert store.get_offset("interactions", 0) == 3
    finally:
        store.close()
