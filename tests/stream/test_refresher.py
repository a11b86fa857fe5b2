"""The refresher on a real RocksDB store, with a recording encoder double above it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.encoder import EncoderConfig, TorchEncoder, TwoTowerModel
from models.features import ItemInput, ItemState, UserInput, UserState, tag_hashes
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore
from stream.ingest.outbox import decode_outbox
from stream.ingest.refresher import ConsumedRecord, EmbeddingRefresher

NOW = 1_800_000_000_000


class RecordingEncoder:
    """Encodes to a deterministic function of the input; remembers every call."""

    version = 7
    dim = 4

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def encode_users(self, inputs: Sequence[UserInput]) -> np.ndarray:
        self.calls.append(("user", [u.user_id for u in inputs]))
        return np.array([[len(u.item_ids), 1, 0, 0] for u in inputs], dtype=np.float32)

    def encode_items(self, inputs: Sequence[ItemInput]) -> np.ndarray:
        self.calls.append(("item", [i.item_id for i in inputs]))
        return np.array([[sum(i.features), 0, 1, 0] for i in inputs], dtype=np.float32)


@pytest.fixture
def store(tmp_path: Path):
    opened = VersionedVectorStore(tmp_path / "db", StoreOptions(keep_versions=2))
    yield opened
    opened.close()


def _record(offset: int, value: bytes | dict, partition: int = 0) -> ConsumedRecord:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return ConsumedRecord("interactions", partition, offset, b"k", raw, NOW - 1000)


def _click(user: str, item: str, ts: int = NOW - 500) -> dict:
    return {"user_id": user, "item_id": item, "type": "click", "ts": ts}


def _refresher(store: VersionedVectorStore, encoder: RecordingEncoder) -> EmbeddingRefresher:
    return EmbeddingRefresher(
        store, encoder, updates_topic="updates", dlq_topic="dlq", user_window=3, clock_ms=lambda: NOW
    )


def test_a_batch_is_coalesced_into_one_encoder_call_per_kind(store: VersionedVectorStore) -> None:
    encoder = RecordingEncoder()
    records = [_record(n, _click("u1" if n % 2 else "u2", f"i{n % 3}")) for n in range(10)]
    outcome = _refresher(store, encoder).process(records)
    assert [kind for kind, _ in encoder.calls] == ["user", "item"]
    assert sorted(encoder.calls[0][1]) == ["u1", "u2"]
    assert sorted(encoder.calls[1][1]) == ["i0", "i1", "i2"]
    assert outcome.applied == 10 and outcome.written == {("user", 7): 2, ("item", 7): 3}
    user = UserState.from_bytes(store.get_states("user", ["u1"])[0], window=3)
    assert user.count == 5 and len(user.item_ids) == 3  # the window holds, the count is exact
    assert store.get_record("user", "u1")[0].vector[0] == 3.0
    assert store.get_offset("interactions", 0) == 10


def test_redelivered_records_are_skipped_not_applied_twice(store: VersionedVectorStore) -> None:
    encoder = RecordingEncoder()
    refresher = _refresher(store, encoder)
    refresher.process([_record(0, _click("u", "a")), _record(1, _click("u", "b"))])
    outcome = refresher.process([_record(1, _click("u", "b")), _record(2, _click("u", "c"))])
    assert outcome.duplicates == 1 and outcome.applied == 1
    assert UserState.from_bytes(store.get_states("user", ["u"])[0]).count == 3


def test_bad_records_go_to_the_outbox_for_the_dlq_and_advance_the_offset(store: VersionedVectorStore) -> None:
    encoder = RecordingEncoder()
    outcome = _refresher(store, encoder).process(
        [_record(0, b"garbage"), _record(1, _click("u", "a")), _record(2, {"user_id": "u"})]
    )
    assert outcome.applied == 1 and sum(outcome.rejected.values()) == 2
    committed = decode_outbox(store.pending_outbox())
    dead = [m for m in committed if m.topic == "dlq"]
    assert [m.value for m in dead] == [b"garbage", b'{"user_id":"u"}']
    assert dict(dead[0].headers)["source.offset"] == b"0"
    updates = [orjson.loads(m.value) for m in committed if m.topic == "updates"]
    assert sorted((u["kind"], u["id"], u["version"]) for u in updates) == [("item", "a", 7), ("user", "u", 7)]
    assert store.get_offset("interactions", 0) == 3


def test_a_batch_of_only_bad_records_writes_no_vectors(store: VersionedVectorStore) -> None:
    encoder = RecordingEncoder()
    outcome = _refresher(store, encoder).process([_record(0, b"{}"), _record(1, b"")])
    assert encoder.calls == [] and outcome.written == {}
    assert store.get_offset("interactions", 0) == 2


def test_freshness_is_measured_from_the_latest_event_of_each_entity(store: VersionedVectorStore) -> None:
    encoder = RecordingEncoder()
    outcome = _refresher(store, encoder).process(
        [_record(0, _click("u", "a", ts=NOW - 4000)), _record(1, _click("u", "b", ts=NOW - 1000))]
    )
    assert sorted(outcome.lags_seconds) == [1.0, 1.0, 4.0]


def test_an_oversized_bad_record_is_dead_lettered_truncated(store: VersionedVectorStore) -> None:
    from stream.ingest.refresher import MAX_DEAD_LETTER_BYTES

    huge = b"x" * (MAX_DEAD_LETTER_BYTES + 10)
    outcome = _refresher(store, RecordingEncoder()).process([_record(0, huge)])
    (dead,) = outcome.outbox
    assert len(dead.value) == MAX_DEAD_LETTER_BYTES and dead.value == huge[:MAX_DEAD_LETTER_BYTES]
    assert dict(dead.headers)["truncated.from"] == str(len(huge)).encode()


def test_the_batch_form_of_updates_lists_every_written_id_in_few_messages(
    store: VersionedVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stream.ingest.refresher.UPDATE_IDS_PER_MESSAGE", 4)
    refresher = EmbeddingRefresher(
        store,
        RecordingEncoder(),
        updates_topic="updates",
        dlq_topic="dlq",
        clock_ms=lambda: NOW,
        updates_format="batch",
    )
    records = [_record(n, _click(f"u{n}", f"i{n % 3}", ts=NOW - 100 + n)) for n in range(10)]
    outcome = refresher.process(records)
    updates = [message for message in outcome.outbox if message.topic == "updates"]
    assert [message.key for message in updates] == [b"user:7"] * 3 + [b"item:7"]  # 4 + 4 + 2 users
    bodies = [orjson.loads(message.value) for message in updates]
    users = [entity for body in bodies if body["kind"] == "user" for entity in body["ids"]]
    assert sorted(users) == sorted(f"u{n}" for n in range(10))
    first = bodies[0]
    assert first["version"] == 7 and first["ts"] == NOW and len(first["event_ts"]) == len(first["ids"])
    assert first["event_ts"][first["ids"].index("u3")] == NOW - 97  # each id's latest event
    assert decode_outbox(store.pending_outbox()) == outcome.outbox  # committed with the batch


def test_the_updates_format_setting_is_checked() -> None:
    from stream.settings import Settings, SettingsError

    assert Settings.from_env({"EMBSTREAM_UPDATES_FORMAT": "batch"}).updates_format == "batch"
    with pytest.raises(SettingsError, match="EMBSTREAM_UPDATES_FORMAT='per-entity' must be one of"):
        Settings(updates_format="per-entity")


@pytest.fixture(scope="module")
def updates_refresher(tmp_path_factory: pytest.TempPathFactory):
    opened = VersionedVectorStore(tmp_path_factory.mktemp("updates") / "db")
    yield EmbeddingRefresher(opened, RecordingEncoder(), updates_topic="updates", dlq_topic="dlq")
    opened.close()


@given(ids=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8, unique=True))
@settings(max_examples=60, deadline=None)
def test_update_messages_are_json_of_every_id_whatever_it_holds(
    updates_refresher: EmbeddingRefresher, ids: list[str]
) -> None:
    refresher = updates_refresher
    stamps = np.arange(len(ids), dtype=np.int64) + NOW
    messages = refresher._updates("user", ids, 3, NOW + 5, stamps)
    assert [message.key for message in messages] == [f"user:{entity_id}".encode() for entity_id in ids]
    bodies = [orjson.loads(message.value) for message in messages]
    assert bodies == [
        {"kind": "user", "id": entity_id, "version": 3, "ts": NOW + 5, "event_ts": int(stamp)}
        for entity_id, stamp in zip(ids, stamps, strict=True)
    ]


def test_item_tags_of_events_reach_the_stored_state_and_a_tag_reading_tower(
    store: VersionedVectorStore,
) -> None:
    torch.manual_seed(0)
    config = EncoderConfig(dim=8, id_dim=4, buckets=256, hidden=8, history=3, item_tags=True)
    encoder = TorchEncoder(TwoTowerModel(config), version=3)
    refresher = EmbeddingRefresher(
        store, encoder, updates_topic="updates", dlq_topic="dlq", user_window=3, clock_ms=lambda: NOW
    )
    tagged = {**_click("u", "film"), "item_tags": ["Drama", "Crime"]}
    refresher.process([_record(0, tagged), _record(1, _click("u", "plain"))])
    (film, plain) = store.get_states("item", ["film", "plain"])
    assert film is not None and film[0] == 2 and plain is not None and plain[0] == 1
    assert ItemState.from_bytes(film).tags == tag_hashes(["Drama", "Crime"])
    expected = encoder.encode_items([ItemState.from_bytes(film).to_input("film")])
    (record,) = store.get_records("item", ["film"])
    assert record is not None
    np.testing.assert_allclose(record[0].vector, expected[0], atol=1e-6)
    untagged = encoder.encode_items([ItemState.from_bytes(plain).to_input("film")])
    assert not np.allclose(expected, untagged)  # the tags moved the vector
    # an event without item_tags keeps them; an empty list clears them
    refresher.process([_record(2, _click("v", "film", NOW - 400))])
    assert ItemState.from_bytes(store.get_states("item", ["film"])[0]).tags == tag_hashes(["Drama", "Crime"])  # type: ignore[arg-type]
    refresher.process([_record(3, {**_click("w", "film", NOW - 300), "item_tags": []})])
    (cleared,) = store.get_states("item", ["film"])
    assert cleared is not None and cleared[0] == 1 and ItemState.from_bytes(cleared).tags == ()
