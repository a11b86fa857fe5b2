"""Scale-out batches on real RocksDB stores: the user side, the item repartition, the
changelog a second store applies, and the rules that keep replicas consistent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import orjson
import pytest

from models.features import ItemState, UserState
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore
from stream.ingest.refresher import ConsumedRecord, EmbeddingRefresher
from stream.scaleout.changelog import (
    ChangelogAssembler,
    decode_bundle,
    decode_changelog,
    encode_changelog,
    split_changelog,
)
from stream.scaleout.refresher import KEY_NOT_USER_ID, PartitionedRefresher, PreparedBatch, item_partition
from tests.stream.test_refresher import NOW, RecordingEncoder

PARTITIONS = 3


class SecondVersion(RecordingEncoder):
    version = 8


@pytest.fixture
def stores(tmp_path: Path):
    opened = [VersionedVectorStore(tmp_path / f"db{i}", StoreOptions(keep_versions=3)) for i in range(3)]
    yield opened
    for store in opened:
        store.close()


def _refresher(store: VersionedVectorStore, *encoders: RecordingEncoder) -> PartitionedRefresher:
    chosen = list(encoders) or [RecordingEncoder()]
    return PartitionedRefresher(
        store,
        lambda: chosen,
        topic="interactions",
        partitions=PARTITIONS,
        updates_topic="updates",
        dlq_topic="dlq",
        user_window=5,
        clock_ms=lambda: NOW,
    )


def _events(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    types = ["view", "click", "cart", "purchase"]
    return [
        {
            "user_id": f"u{rng.integers(0, 12)}",
            "item_id": f"i{rng.integers(0, 9)}",
            "type": types[rng.integers(0, 4)],
            "ts": NOW - 10_000 + index,
        }
        for index in range(count)
    ]


def _records(events: list[dict], first_offsets: dict[int, int] | None = None) -> list[ConsumedRecord]:
    """Events keyed by user, in a partition per user (as a Kafka producer would place them)."""
    offsets = dict(first_offsets or {})
    records = []
    for event in events:
        partition = int(event["user_id"][1:]) % PARTITIONS
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        records.append(
            ConsumedRecord(
                "interactions", partition, offset, event["user_id"].encode(), orjson.dumps(event), NOW - 1000
            )
        )
    return sorted(records, key=lambda r: (r.partition, r.offset))


def _bundle_records(prepared: PreparedBatch, next_offsets: dict[int, int]) -> list[ConsumedRecord]:
    """The batch's item bundles as the by-item topic would deliver them."""
    records = []
    for message in prepared.messages:
        if message.topic != "interactions.by-item":
            continue
        assert message.partition is not None
        offset = next_offsets.get(message.partition, 0)
        next_offsets[message.partition] = offset + 1
        records.append(
            ConsumedRecord("interactions.by-item", message.partition, offset, None, message.value, NOW - 900)
        )
    return sorted(records, key=lambda r: (r.partition, r.offset))


def _item_totals(store: VersionedVectorStore, items: list[str]) -> dict[str, int]:
    return {
        item: (sum(ItemState.from_bytes(raw).totals) if raw else 0)
        for item, raw in zip(items, store.get_states("item", items), strict=True)
    }


def test_users_stay_in_their_partition_and_items_travel_to_theirs(stores) -> None:
    store = stores[0]
    refresher = _refresher(store)
    events = _events(200)
    prepared = refresher.prepare(_records(events), generation=4)
    assert {batch.partition for batch in prepared.changelog} == set(range(PARTITIONS))
    for batch in prepared.changelog:
        assert batch.kind == "user" and batch.generation == 4
        assert all(int(user[1:]) % PARTITIONS == batch.partition for user in batch.ids)
        assert batch.start == -1 and batch.end == sum(
            1 for e in events if int(e["user_id"][1:]) % PARTITIONS == batch.partition
        )
    bundles = [m for m in prepared.messages if m.topic == "interactions.by-item"]
    for message in bundles:
        bundle = decode_bundle(message.value)
        assert {item_partition(item, PARTITIONS) for item in bundle.item_ids} == {message.partition}
    assert sum(len(decode_bundle(m.value).item_ids) for m in bundles) == 200
    # nothing is in the store before commit: the changelog goes out first
    assert store.get_offset("interactions", 0) is None
    prepared.writer.commit()
    assert store.get_offset("interactions", 0) is not None

    assert prepared.outcome.applied == 200 and prepared.outcome.item_events == 0
    items = refresher.prepare(_bundle_records(prepared, {}), generation=4)
    assert items.outcome.item_events == 200 and items.outcome.consumed == 0
    items.writer.commit()
    expected = Counter(event["item_id"] for event in events)
    assert _item_totals(store, sorted(expected)) == dict(expected)
    assert all(batch.kind == "item" for batch in items.changelog)


def test_a_bundle_published_twice_is_applied_once(stores) -> None:
    store = stores[0]
    refresher = _refresher(store)
    events = _events(120, seed=1)
    # the user side published this batch's bundles, then crashed before committing it ...
    first = refresher.prepare(_records(events[:60]), generation=1)
    # ... so the same events come again, in a larger batch: the bundles overlap
    replayed = refresher.prepare(_records(events), generation=1)
    replayed.writer.commit()
    offsets: dict[int, int] = {}
    bundle_records = _bundle_records(first, offsets) + _bundle_records(replayed, offsets)
    prepared = refresher.prepare(sorted(bundle_records, key=lambda r: (r.partition, r.offset)), 1)
    prepared.writer.commit()
    assert prepared.outcome.duplicates == 60
    expected = Counter(event["item_id"] for event in events)
    assert _item_totals(store, sorted(expected)) == dict(expected)


def test_scale_out_matches_one_worker_on_the_same_events(stores) -> None:
    """Users equal exactly; items equal in totals and tags, within float noise in vectors."""
    single, scaled = stores[0], stores[1]
    events = _events(300, seed=2)
    for index, event in enumerate(events[::7]):  # items declare tags now and then, [] clears
        event["item_tags"] = [f"genre-{g}" for g in range(index % 3)]
    records = _records(events)
    EmbeddingRefresher(
        single, RecordingEncoder(), updates_topic="u", dlq_topic="d", user_window=5, clock_ms=lambda: NOW
    ).process(records)
    refresher = _refresher(scaled)
    prepared = refresher.prepare(records, generation=1)
    prepared.writer.commit()
    refresher.prepare(_bundle_records(prepared, {}), generation=1).writer.commit()
    users = sorted({e["user_id"] for e in events})
    items = sorted({e["item_id"] for e in events})
    assert single.get_states("user", users) == scaled.get_states("user", users)
    assert _item_totals(single, items) == _item_totals(scaled, items)
    tags = [ItemState.from_bytes(raw).tags for raw in single.get_states("item", items)]  # type: ignore[arg-type]
    assert tags == [ItemState.from_bytes(raw).tags for raw in scaled.get_states("item", items)]  # type: ignore[arg-type]
    assert any(tags) and not all(tags)
    for kind, ids in (("user", users), ("item", items)):
        for a, b in zip(single.get_records(kind, ids), scaled.get_records(kind, ids), strict=True):
            assert a is not None and b is not None
            np.testing.assert_allclose(a[0].vector, b[0].vector, rtol=1e-5)


def test_an_event_keyed_by_something_else_is_dead_lettered(stores) -> None:
    event = {"user_id": "u1", "item_id": "i1", "type": "click", "ts": NOW - 10}
    record = ConsumedRecord("interactions", 1, 0, b"someone-else", orjson.dumps(event), NOW)
    prepared = _refresher(stores[0]).prepare([record], generation=1)
    assert prepared.outcome.rejected == {KEY_NOT_USER_ID: 1}
    assert [m.topic for m in prepared.messages] == ["dlq"]
    assert prepared.changelog[0].ids == [] and prepared.changelog[0].end == 1


def test_a_second_store_applying_the_changelog_holds_the_same_entities(stores) -> None:
    owner, replica = stores[0], stores[1]
    writer_side, reader_side = _refresher(owner), _refresher(replica)
    events = _events(150, seed=3)
    prepared = writer_side.prepare(_records(events), generation=2)
    prepared.writer.commit()
    for batch in prepared.changelog:
        wire = decode_changelog(encode_changelog(batch))
        assert reader_side.apply_changelog(wire).applied
        assert reader_side.apply_changelog(wire).reason == "duplicate"
    users = sorted({e["user_id"] for e in events})
    assert replica.get_states("user", users) == owner.get_states("user", users)
    for a, b in zip(owner.get_records("user", users), replica.get_records("user", users), strict=True):
        assert a is not None and b is not None
        assert a[0].version == b[0].version
        np.testing.assert_array_equal(a[0].vector, b[0].vector)
    for partition in range(PARTITIONS):
        assert replica.get_offset("interactions", partition) == owner.get_offset("interactions", partition)


def test_a_batch_that_does_not_continue_the_replica_is_dropped(stores) -> None:
    owner, replica = stores[0], stores[1]
    events = _events(60, seed=4)
    writer_side, reader_side = _refresher(owner), _refresher(replica)
    first = writer_side.prepare(_records(events[:30]), generation=1)
    first.writer.commit()
    second = writer_side.prepare(_records(events[30:], {p: 100 for p in range(PARTITIONS)}), generation=1)
    # the replica missed the first batch of partition 0 but has the others
    for batch in first.changelog:
        if batch.partition != 0:
            reader_side.apply_changelog(batch)
    outcomes = {batch.partition: reader_side.apply_changelog(batch).reason for batch in second.changelog}
    assert outcomes[0] == "applied"  # no offset known yet: anything continues it
    gap = msgspec.structs.replace(second.changelog[1], start=second.changelog[1].start + 7)
    replica_offset = replica.get_offset("interactions", 1)
    assert reader_side.apply_changelog(gap).reason in ("gap", "duplicate")
    assert replica.get_offset("interactions", 1) == replica_offset


def test_a_replica_encodes_the_versions_the_writer_lacked(stores) -> None:
    owner, replica = stores[0], stores[1]
    prepared = _refresher(owner).prepare(_records(_events(40, seed=5)), generation=1)
    prepared.writer.commit()
    staged = _refresher(replica, RecordingEncoder(), SecondVersion())
    for batch in prepared.changelog:
        assert batch.versions == [7]
        staged.apply_changelog(batch)
    users = sorted({user for batch in prepared.changelog for user in batch.ids})
    for record in replica.get_records("user", users):
        assert record is not None
        assert sorted(v.version for v in record) == [7, 8]


def test_large_batches_are_split_and_joined_and_half_batches_are_dropped(stores) -> None:
    prepared = _refresher(stores[0]).prepare(_records(_events(400, seed=6)), generation=1)
    batch = max(prepared.changelog, key=lambda b: len(b.ids))
    parts = split_changelog(batch, max_bytes=150)
    assert len(parts) > 2
    assembler = ChangelogAssembler()
    for part in parts[:-1]:
        assert assembler.add(decode_changelog(encode_changelog(part))) is None
    joined = assembler.add(parts[-1])
    assert joined is not None and joined.ids == batch.ids and joined.states == batch.states
    np.testing.assert_array_equal(joined.matrix(0), batch.matrix(0))
    # a writer that stopped half-way and published the batch again from its first part
    assembler.add(parts[0])
    assembler.add(parts[1])
    assert [assembler.add(part) for part in parts][-1] is not None
    # a part whose predecessors were never seen is not applied
    assert ChangelogAssembler().add(parts[1]) is None


def test_user_state_counts_every_event_once(stores) -> None:
    events = _events(90, seed=7)
    refresher = _refresher(stores[0])
    records = _records(events)
    refresher.prepare(records, generation=1).writer.commit()
    redelivered = refresher.prepare(records, generation=1)
    assert redelivered.outcome.duplicates == 90
    per_user = Counter(event["user_id"] for event in events)
    for user, count in per_user.items():
        raw = stores[0].get_states("user", [user])[0]
        assert raw is not None and UserState.from_bytes(raw, window=5).count == count


def test_a_bundle_from_a_release_without_item_tags_still_decodes() -> None:
    older = msgspec.msgpack.encode(
        {
            "source_partition": 1,
            "offsets": np.array([5], np.int64).tobytes(),
            "item_ids": ["i1"],
            "type_codes": bytes([1]),
            "values": np.array([np.nan], np.float32).tobytes(),
            "timestamps_ms": np.array([NOW], np.int64).tobytes(),
        }
    )
    bundle = decode_bundle(older)
    assert bundle.item_tags == {} and next(iter(bundle.columns()))[:3] == (5, "i1", 1)
