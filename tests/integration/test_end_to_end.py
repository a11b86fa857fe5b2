"""End to end on the real broker and RocksDB: kafka-python events in, vectors out of the API."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.kafka.broker import EmbeddedBroker
from stream.kafka.topics import ensure_topics
from tests.conftest import WorkerProcess, http_json, produce, read_topic, wait_until

pytestmark = pytest.mark.integration
TOPIC = "e2e-interactions"


def _now() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def worker(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    running = WorkerProcess(
        tmp_path_factory.mktemp("e2e") / "data", trained_registry, broker.bootstrap, TOPIC
    ).start()
    yield running
    assert running.stop() == 0, running.log()


def _event(user: str, item: str, kind: str = "click", **extra: object) -> dict[str, object]:
    return {"user_id": user, "item_id": item, "type": kind, "ts": _now(), **extra}


def _get(worker: WorkerProcess, kind: str, entity_id: str, query: str = "") -> tuple[int, dict]:
    return http_json("GET", f"{worker.api}/v1/embeddings/{kind}/{entity_id}{query}")


def _wait_vector(worker: WorkerProcess, kind: str, entity_id: str, newer_than: int = 0) -> dict:
    def ready() -> dict | None:
        status, body = _get(worker, kind, entity_id)
        return body if status == 200 and body["updated_at"] > newer_than else None

    return wait_until(ready, timeout_s=20)


def test_events_become_unit_vectors_of_the_active_version(
    worker: WorkerProcess, broker: EmbeddedBroker
) -> None:
    produce(
        broker.bootstrap,
        TOPIC,
        [
            _event("alice", "book-1"),
            _event("alice", "book-2", "purchase"),
            _event("bob", "book-1", "rating", value=4),
        ],
    )
    for kind, entity_id in [("user", "alice"), ("user", "bob"), ("item", "book-1"), ("item", "book-2")]:
        body = _wait_vector(worker, kind, entity_id)
        assert body["kind"] == kind and body["id"] == entity_id
        assert body["version"] == 1 and body["source"] == "native"
        assert len(body["vector"]) == 64
        assert math.isclose(math.sqrt(sum(x * x for x in body["vector"])), 1.0, rel_tol=1e-4)


def test_a_later_event_changes_the_user_vector(worker: WorkerProcess, broker: EmbeddedBroker) -> None:
    produce(broker.bootstrap, TOPIC, [_event("carol", "film-1")])
    first = _wait_vector(worker, "user", "carol")
    produce(broker.bootstrap, TOPIC, [_event("carol", "film-99", "purchase")])
    second = _wait_vector(worker, "user", "carol", newer_than=first["updated_at"])
    assert second["vector"] != first["vector"]


def test_lookup_errors_are_json_with_the_right_status(worker: WorkerProcess, broker: EmbeddedBroker) -> None:
    produce(broker.bootstrap, TOPIC, [_event("dave", "song-1")])
    _wait_vector(worker, "user", "dave")
    status, body = _get(worker, "user", "nobody-has-this-id")
    assert status == 404 and body["error"] == "not_found"
    status, body = _get(worker, "planet", "dave")
    assert status == 400 and body["error"] == "bad_kind"
    for bad in ("abc", "0", "-3", "1.5"):
        status, body = _get(worker, "user", "dave", f"?version={bad}")
        assert status == 400 and body["error"] == "bad_version", bad
    status, body = _get(worker, "user", "dave", "?version=7")
    assert status == 404 and body["error"] == "version_not_found"
    status, body = _get(worker, "user", "dave", "?version=1")
    assert status == 200 and body["version"] == 1


def test_batch_lookup_returns_null_for_missing_ids(worker: WorkerProcess, broker: EmbeddedBroker) -> None:
    produce(broker.bootstrap, TOPIC, [_event("erin", "game-1"), _event("frank", "game-2")])
    _wait_vector(worker, "user", "frank")
    _wait_vector(worker, "user", "erin")
    status, body = http_json(
        "POST", f"{worker.api}/v1/embeddings/user/batch", {"ids": ["erin", "ghost", "frank"]}
    )
    assert status == 200 and body["version"] == 1
    erin, ghost, frank = body["results"]
    assert erin["id"] == "erin" and frank["id"] == "frank" and ghost is None
    status, body = http_json("POST", f"{worker.api}/v1/embeddings/user/batch", {"ids": "erin"})
    assert status == 400
    status, body = http_json(
        "POST", f"{worker.api}/v1/embeddings/user/batch", {"ids": ["erin"], "version": 9}
    )
    assert status == 200 and body["results"] == [None]


def test_malformed_events_go_to_the_dlq_and_valid_ones_around_them_apply(
    worker: WorkerProcess, broker: EmbeddedBroker
) -> None:
    bad = [
        b"not json",
        b"[1, 2]",
        b'{"user_id": 5, "item_id": "x", "type": "view"}',
        b'{"user_id": "u", "item_id": "x", "type": "teleport"}',
        b'{"user_id": "u", "item_id": "x", "type": "view", "ts": 99999999999999999}',
        b'{"user_id": "u", "item_id": "x", "type": "view", "value": "high"}',
    ]
    good = [_event(f"dlq-user-{n}", f"dlq-item-{n}") for n in range(20)]
    mixed: list[object] = []
    for index, event in enumerate(good):
        mixed.append(event)
        if index < len(bad):
            mixed.append(bad[index])
    produce(broker.bootstrap, TOPIC, mixed)
    for event in good:
        _wait_vector(worker, "user", str(event["user_id"]))
    dead = wait_until(
        lambda: (r := read_topic(broker.bootstrap, f"{TOPIC}.dlq")) and len(r) >= len(bad) and r
    )
    by_value = {record.value: dict(record.headers) for record in dead}
    for value in bad:
        headers = by_value[value]
        assert headers["error"] and headers["source.topic"] == TOPIC.encode()
    assert by_value[b"not json"]["error"] == b"value is not JSON"
    assert worker.metric("embstream_events_rejected_total") >= len(bad)
    _, health = http_json("GET", f"{worker.api}/healthz")
    assert health["status"] == "ok"


def test_updates_topic_carries_one_message_per_written_embedding(
    worker: WorkerProcess, broker: EmbeddedBroker
) -> None:
    produce(broker.bootstrap, TOPIC, [_event("updates-user", f"updates-item-{n}") for n in range(5)])
    _wait_vector(worker, "user", "updates-user")
    for n in range(5):
        _wait_vector(worker, "item", f"updates-item-{n}")
    written = worker.metric("embstream_embeddings_written_total")
    updates = wait_until(
        lambda: (r := read_topic(broker.bootstrap, f"{TOPIC}.updates")) and len(r) >= written and r
    )
    assert len(updates) == written

    bodies = [json.loads(record.value) for record in updates]
    assert all(set(body) >= {"kind", "id", "version", "ts"} for body in bodies)
    per_user = Counter(body["id"] for body in bodies if body["kind"] == "user")
    assert per_user["updates-user"] >= 1


def test_versions_and_metrics_describe_the_store(worker: WorkerProcess, broker: EmbeddedBroker) -> None:
    produce(broker.bootstrap, TOPIC, [_event("metrics-user", "metrics-item")])
    _wait_vector(worker, "user", "metrics-user")
    status, body = http_json("GET", f"{worker.api}/v1/versions")
    assert status == 200
    assert body["serving_version"] == 1 and body["active_encoder_version"] == 1
    assert body["store"]["user"]["1"] >= 1 and body["store"]["item"]["1"] >= 1
    assert worker.metric("embstream_events_consumed_total") >= 1
    assert worker.metric("embstream_refresh_lag_seconds_count") >= 1
    # The refreshed vectors went into the serving cache as they were committed.
    assert worker.metric("embstream_serving_cache_vectors") >= 2
    assert 0 < worker.metric("embstream_serving_cache_bytes") <= 512 << 20


def test_topics_can_be_created_twice(broker: EmbeddedBroker) -> None:
    ensure_topics([broker.bootstrap], {"twice": 2})
    ensure_topics([broker.bootstrap], {"twice": 2})


def test_with_the_batch_updates_format_the_topic_lists_every_written_id(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    topic = "e2e-batch-updates"
    worker = WorkerProcess(
        tmp_path / "data",
        trained_registry,
        broker.bootstrap,
        topic,
        env={"EMBSTREAM_UPDATES_FORMAT": "batch"},
    ).start()
    try:
        produce(broker.bootstrap, topic, [_event(f"bu-{n}", f"bi-{n % 4}") for n in range(30)])
        wait_until(lambda: worker.metric("embstream_events_consumed_total") >= 30, timeout_s=30)
        written = worker.metric("embstream_embeddings_written_total")

        def listed() -> list[dict] | None:
            bodies = [json.loads(r.value) for r in read_topic(broker.bootstrap, f"{topic}.updates")]
            return bodies if sum(len(body["ids"]) for body in bodies) >= written else None

        bodies = wait_until(listed, timeout_s=30)
        assert len(bodies) < written  # a few messages, not one per vector
        users = {entity for body in bodies if body["kind"] == "user" for entity in body["ids"]}
        assert users == {f"bu-{n}" for n in range(30)}
        assert all(len(body["event_ts"]) == len(body["ids"]) and body["version"] == 1 for body in bodies)
    finally:
        worker.stop()
