"""Scale-out logic above Kafka: readiness over the API, the metrics it adds, a changelog that
no longer reaches back to a store's position, and the follower's generation fence. Kafka is
stood in for by a small fake here; the live behaviour is in tests/faults/test_scale_out.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import TopicPartition

from store.vector_store import VersionedVectorStore
from stream.api.app import ApiContext, create_app
from stream.metrics import Metrics
from stream.scaleout.changelog import ChangelogBatch, encode_changelog, split_changelog
from stream.scaleout.refresher import PartitionedRefresher
from stream.scaleout.replica import ChangelogFollower
from tests.stream.test_refresher import NOW, RecordingEncoder


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VersionedVectorStore]:
    opened = VersionedVectorStore(tmp_path / "db")
    yield opened
    opened.close()


def _get(context: ApiContext, path: str, token: str | None = None) -> tuple[int, Any]:
    async def run() -> tuple[int, Any]:
        async with TestClient(TestServer(create_app(context))) as client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            answer = await client.get(path, headers=headers)
            return answer.status, await answer.json()

    return asyncio.run(run())


class _Loaded:
    """A controller whose serving encoder is loaded (what ``/readyz`` asks of it)."""

    serving_encoder = object()


def test_readyz_follows_the_worker_and_needs_no_token(store: VersionedVectorStore) -> None:
    state = {"ready": False}
    context = ApiContext(
        store=store,
        metrics=Metrics(),
        registry=None,  # type: ignore[arg-type]
        health=dict,
        token="secret",
        readiness=lambda: (state["ready"], "ready" if state["ready"] else "replaying"),
    )
    assert _get(context, "/readyz") == (
        503,
        {"ready": False, "reason": "starting: loading the serving encoder"},
    )
    context.controller = _Loaded()  # type: ignore[assignment]
    assert _get(context, "/readyz") == (503, {"ready": False, "reason": "replaying"})
    state["ready"] = True
    assert _get(context, "/readyz") == (200, {"ready": True, "reason": "ready"})  # the consumer's own
    context.indexes_pending = True  # indexes on, not set up yet: not ready, and no 404 meanwhile
    assert _get(context, "/readyz") == (
        503,
        {"ready": False, "reason": "starting: setting up the item indexes"},
    )
    status, body = _get(context, "/v1/recommendations/u1", token="secret")
    assert (status, body["error"]) == (503, "index_building")


def test_scale_out_metrics_are_rendered_only_for_scale_out_workers() -> None:
    metrics = Metrics()
    plain = metrics.render({}, 1, 1)
    assert "embstream_owned_partitions" not in plain
    metrics.scale_out = lambda: {
        "owned": {"interactions": [0, 2], "by_item": [1]},
        "ready": True,
        "changelog_lag": None,
        "changelog_truncated": 1,
        "changelog_diverged": 0,
        "changelog_batches_applied": 7,
        "changelog_skipped": {"fenced": 2},
        "batches_fenced": 3,
    }
    text = metrics.render({}, 1, 1)
    assert 'embstream_owned_partitions{topic="interactions"} 2' in text
    assert 'embstream_owned_partitions{topic="by_item"} 1' in text
    assert 'embstream_changelog_skipped_total{reason="fenced"} 2' in text
    assert "embstream_batches_fenced_total 3" in text
    assert "embstream_changelog_truncated_partitions 1" in text
    assert "embstream_replica_ready 1" in text
    assert "\nembstream_changelog_lag_records " not in text  # unknown yet: no sample


class FakeConsumer:
    """Just enough of AIOKafkaConsumer for the follower's assignment logic."""

    def __init__(self, log_starts: dict[TopicPartition, int]) -> None:
        self.log_starts = log_starts
        self.assigned: list[TopicPartition] = []
        self.seeks: dict[TopicPartition, int] = {}

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.log_starts.get(tp, 0) for tp in partitions}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks[partition] = offset

    def highwater(self, partition: TopicPartition) -> int | None:
        assert partition in self.assigned, "aiokafka refuses a partition it is not assigned"
        return 50

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)


def _follower(store: VersionedVectorStore, consumer: FakeConsumer) -> ChangelogFollower:
    refresher = PartitionedRefresher(
        store,
        lambda: [RecordingEncoder()],
        topic="interactions",
        partitions=2,
        updates_topic="updates",
        dlq_topic="dlq",
        clock_ms=lambda: NOW,
    )
    follower = ChangelogFollower(refresher, store, ["unused:9092"], 2)
    follower.consumer = consumer  # type: ignore[assignment]
    return follower


def test_a_changelog_that_no_longer_reaches_the_store_is_reported(store: VersionedVectorStore) -> None:
    cut = TopicPartition("interactions.changelog", 1)
    consumer = FakeConsumer({cut: 40})
    follower = _follower(store, consumer)
    asyncio.run(follower.follow({("interactions.by-item", 0)}))
    assert TopicPartition("interactions.by-item.changelog", 0) not in consumer.assigned
    assert len(consumer.assigned) == 3
    assert follower.truncated == {cut}
    assert consumer.seeks[cut] == 40 and consumer.seeks[TopicPartition("interactions.changelog", 0)] == 0
    # the stored position stays, so a restarted worker finds the truncation again ...
    assert follower.position(cut)[0] == 0
    again = _follower(store, FakeConsumer({cut: 40}))
    asyncio.run(again.follow(set()))
    assert again.truncated == {cut}
    # ... and nothing of that partition is applied meanwhile
    follower._handle(cut, 41, encode_changelog(ChangelogBatch("interactions", 1, -1, 9, 1, "user")))
    assert store.get_offset("interactions", 1) is None
    assert follower.lag() == 50 + 50 + 10  # highwater 50 each; the cut one is read from 40
    ready, reason = follower.readiness()
    assert not ready and "interactions.changelog[1]" in reason
    follower.following.add(TopicPartition("interactions.by-item.changelog", 0))  # mid take-over
    assert follower.lag() is None


def test_batches_from_a_fenced_writer_are_dropped(store: VersionedVectorStore) -> None:
    follower = _follower(store, FakeConsumer({}))
    changelog = TopicPartition("interactions.changelog", 0)

    def batch(start: int, end: int, generation: int, fence: bool = False) -> bytes:
        return encode_changelog(
            ChangelogBatch("interactions", 0, start, end, generation, "user", fence=fence)
        )

    follower._handle(changelog, 0, batch(-1, 10, generation=3))
    assert store.get_offset("interactions", 0) == 10
    follower._handle(changelog, 1, batch(10, 10, generation=4, fence=True))  # a new owner
    follower._handle(changelog, 2, batch(10, 20, generation=3))  # the old owner, too late
    assert store.get_offset("interactions", 0) == 10
    assert follower.skipped["fenced"] == 1
    follower._handle(changelog, 3, batch(10, 15, generation=4))
    assert store.get_offset("interactions", 0) == 15
    assert follower.position(changelog) == (4, 4)
    follower._handle(changelog, 3, batch(10, 15, generation=4))  # read again: already past it
    assert follower.applied_batches == 2
    follower._handle(changelog, 4, b"\x00 not a batch")
    assert follower.skipped["malformed"] == 1 and follower.position(changelog)[0] == 5


def test_a_late_fenced_record_inside_a_multi_part_batch_does_not_lose_the_batch(
    store: VersionedVectorStore,
) -> None:
    """A frozen worker's late record lands between two parts of the new owner's batch."""
    follower = _follower(store, FakeConsumer({}))
    changelog = TopicPartition("interactions.changelog", 0)
    follower._handle(changelog, 0, encode_changelog(ChangelogBatch("interactions", 0, -1, 10, 3, "user")))
    fence = ChangelogBatch("interactions", 0, 10, 10, 4, "user", fence=True)
    follower._handle(changelog, 1, encode_changelog(fence))
    ids = [f"u{i}" for i in range(6)]
    big = ChangelogBatch(
        "interactions", 0, 10, 20, 4, "user", ids=ids, states=[b"x" * 10] * 6,
        versions=[7], vectors=[np.zeros((6, 4), np.float32).tobytes()], dims=[4],
    )  # fmt: skip
    parts = split_changelog(big, max_bytes=40)
    assert len(parts) > 2
    follower._handle(changelog, 2, encode_changelog(parts[0]))
    late = ChangelogBatch("interactions", 0, 10, 15, 3, "user")
    follower._handle(changelog, 3, encode_changelog(late))
    assert follower.position(changelog)[0] == 2  # still before the pending batch's first part
    follower._handle(changelog, 4, b"garbage")
    assert follower.position(changelog)[0] == 2
    for index, part in enumerate(parts[1:]):
        follower._handle(changelog, 5 + index, encode_changelog(part))
    assert store.get_offset("interactions", 0) == 20
    assert follower.skipped == {"fenced": 1, "malformed": 1}
    assert follower.readiness()[0] is False  # not replayed to the end yet (no highwater)
    assert not follower.diverged


def test_a_restart_fence_resets_the_generation_readers_expect(store: VersionedVectorStore) -> None:
    follower = _follower(store, FakeConsumer({}))
    changelog = TopicPartition("interactions.changelog", 1)
    follower._handle(changelog, 0, encode_changelog(ChangelogBatch("interactions", 1, -1, 5, 9, "user")))
    # the group expired and was recreated: generations start again at 1
    follower._handle(changelog, 1, encode_changelog(ChangelogBatch("interactions", 1, 5, 8, 1, "user")))
    assert store.get_offset("interactions", 1) == 5 and follower.skipped["fenced"] == 1
    restart = ChangelogBatch("interactions", 1, 5, 5, 1, "user", fence=True, restart=True)
    follower._handle(changelog, 2, encode_changelog(restart))
    follower._handle(changelog, 3, encode_changelog(ChangelogBatch("interactions", 1, 5, 8, 1, "user")))
    assert store.get_offset("interactions", 1) == 8 and follower.position(changelog) == (4, 1)


def test_a_missed_batch_makes_the_replica_not_ready_and_says_how_to_recover(
    store: VersionedVectorStore,
) -> None:
    follower = _follower(store, FakeConsumer({}))
    follower.ready = True
    changelog = TopicPartition("interactions.by-item.changelog", 0)
    follower._handle(
        changelog, 0, encode_changelog(ChangelogBatch("interactions.by-item", 0, -1, 5, 1, "item"))
    )
    follower._handle(
        changelog, 1, encode_changelog(ChangelogBatch("interactions.by-item", 0, 7, 9, 1, "item"))
    )
    ready, reason = follower.readiness()
    assert not ready and "interactions.by-item.changelog[0]" in reason and "backup" in reason
    assert store.get_offset("interactions.by-item", 0) == 5
    assert follower.position(changelog)[0] == 1  # before the batch that did not continue
    restarted = _follower(store, FakeConsumer({}))
    restarted._handle(
        changelog, 1, encode_changelog(ChangelogBatch("interactions.by-item", 0, 7, 9, 1, "item"))
    )
    assert restarted.diverged == {changelog}  # found again after a restart


def test_a_half_published_batch_at_the_end_does_not_hold_readiness_back(store: VersionedVectorStore) -> None:
    """A writer died between the parts of its last batch: the replica is up to date."""
    consumer = FakeConsumer({})
    follower = _follower(store, consumer)
    asyncio.run(follower.follow(set()))
    ids = [f"u{i}" for i in range(6)]
    big = ChangelogBatch(
        "interactions", 0, -1, 20, 1, "user", ids=ids, states=[b"x" * 10] * 6,
        versions=[7], vectors=[np.zeros((6, 4), np.float32).tobytes()], dims=[4],
    )  # fmt: skip
    first, *_ = split_changelog(big, max_bytes=40)
    changelog = TopicPartition("interactions.changelog", 0)
    records = [_Record(48, encode_changelog(ChangelogBatch("interactions", 0, -1, 3, 1, "user"))),
               _Record(49, encode_changelog(first))]  # fmt: skip
    for partition in consumer.assigned:
        follower.read_to[partition] = 50  # the other partitions are read to their end
    follower._handle_all(changelog, records)
    assert follower.position(changelog)[0] == 49  # a restart reads the half batch again
    assert follower.lag() == 0


def test_a_new_broker_forgets_changelog_positions_and_item_watermarks(store: VersionedVectorStore) -> None:
    writer = store.writer()
    writer.set_offset("interactions", 0, 40)
    writer.put_meta("changelog:interactions.changelog/0", b"\x01" * 16)
    writer.put_meta("watermark:interactions.by-item/0/1", b"\x02" * 8)
    writer.put_meta("worker_id", b"me")
    writer.commit()
    store.ensure_broker_incarnation("first")
    assert store.get_meta("changelog:interactions.changelog/0") is None
    assert store.get_meta("watermark:interactions.by-item/0/1") is None
    assert store.get_offset("interactions", 0) is None
    assert store.get_meta("worker_id") == b"me"


class _Record:
    def __init__(self, offset: int, value: bytes) -> None:
        self.offset, self.value = offset, value


class _Coordinator:
    generation = 5


class RecordingConsumer(FakeConsumer):
    """Records the offsets committed to the group; owns every partition it is given."""

    def __init__(self, owned: list[TopicPartition]) -> None:
        super().__init__({})
        self.assigned = owned
        self._coordinator = _Coordinator()
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            raise ValueError(offsets)  # what aiokafka does with an empty commit
        self.commits.append(dict(offsets))


def test_a_batch_of_only_redelivered_records_commits_nothing_and_does_not_fail(
    store: VersionedVectorStore,
) -> None:
    from stream.scaleout.worker import ScaleOutWorker
    from stream.settings import Settings
    from tests.stream.test_partitioned import _events, _records

    refresher = PartitionedRefresher(
        store, lambda: [RecordingEncoder()], topic="interactions", partitions=3,
        updates_topic="updates", dlq_topic="dlq", clock_ms=lambda: NOW,
    )  # fmt: skip
    records = _records(_events(30))
    refresher.prepare(records, generation=5).writer.commit()  # applied once already
    worker = ScaleOutWorker(Settings(broker="127.0.0.1:9"), store, Metrics())
    owned = [TopicPartition("interactions", p) for p in range(3)]
    consumer = RecordingConsumer(owned)
    worker.consumer = consumer  # type: ignore[assignment]
    worker.follower = _follower(store, FakeConsumer({}))
    fetched_before_take_over = {owned[0]: [records[0]]}

    async def not_yet_taken_over() -> None:
        await worker._process(fetched_before_take_over, refresher, asyncio.get_running_loop())

    asyncio.run(not_yet_taken_over())  # records of a partition not taken over yet: ignored
    assert consumer.commits == [] and worker.metrics.events_duplicate == 0
    worker.assigned = [0, 1, 2]  # what a successful take-over sets
    fetched: dict[TopicPartition, list[Any]] = {}
    for record in records:
        fetched.setdefault(TopicPartition(record.topic, record.partition), []).append(record)

    async def run() -> None:
        await worker._process(fetched, refresher, asyncio.get_running_loop())

    asyncio.run(run())
    assert consumer.commits == []
    assert worker.metrics.events_duplicate == 30 and worker.metrics.events_applied == 0
