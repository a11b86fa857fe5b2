"""Two workers share a group under load; one is killed with SIGKILL and comes back.

What must hold: both nodes answer for every id while both run; after the kill the other
node takes every partition over within a bounded time, and no lookup of an id it already
served fails meanwhile; no event is lost or applied twice (exact per-user and per-item
counts); the restarted node catches up from the changelog and ends with the same state as
the survivor.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaProducer

from models.features import ItemState, UserState
from store.vector_store import VersionedVectorStore
from stream.broker import EmbeddedBroker
from tests.conftest import WorkerProcess, http_json, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TOPIC = "scale-interactions"
PARTITIONS = 4
USERS = 300
ITEMS = 40


def _event(n: int, round_: int) -> dict:
    return {
        "user_id": f"s{(n * 7 + round_) % USERS}",
        "item_id": f"si{n % ITEMS}",
        "type": ("view", "click", "cart")[n % 3],
        "ts": int(time.time() * 1000),
    }


class Producer(threading.Thread):
    """Sends ``count`` events at ``rate`` per second, keyed by user (the default partitioner)."""

    def __init__(self, bootstrap: str, count: int, rate: float, round_: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.count, self.rate, self.round = bootstrap, count, rate, round_
        self.sent: list[dict] = []

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=[self.bootstrap], linger_ms=5)
        started = time.monotonic()
        for n in range(self.count):
            event = _event(n, self.round)
            producer.send(TOPIC, json.dumps(event).encode(), key=event["user_id"].encode())
            self.sent.append(event)
            delay = started + (n + 1) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.flush()
        producer.close()


class Reader(threading.Thread):
    """Looks users up on every live node in turn. A lookup *fails* when a node answers
    anything but 200 for an id some node has already served."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.nodes: dict[str, str] = {}
        self.stop = threading.Event()
        self.served: set[str] = set()
        self.lookups = 0
        self.failures: list[tuple[str, str, str]] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            for name, api in list(self.nodes.items()):
                user = f"s{n % USERS}"
                n += 1
                try:
                    with urllib.request.urlopen(f"{api}/v1/embeddings/user/{user}", timeout=5) as answer:
                        status = answer.status
                except urllib.error.HTTPError as error:
                    status = error.code
                except OSError as error:
                    if name in self.nodes:  # not a node that was just removed
                        self.failures.append((name, user, repr(error)))
                    continue
                self.lookups += 1
                if status == 200:
                    self.served.add(user)
                elif user in self.served:
                    self.failures.append((name, user, str(status)))
            time.sleep(0.01)


def _owned(worker: WorkerProcess) -> tuple[set[int], set[int]]:
    try:
        status, body = http_json("GET", f"{worker.api}/healthz")
    except OSError:
        return set(), set()
    owned = body.get("scale_out", {}).get("owned", {}) if status == 200 else {}
    return set(owned.get("interactions", [])), set(owned.get("by_item", []))


def _states(data: Path, users: list[str], items: list[str]) -> tuple[dict, dict]:
    store = VersionedVectorStore(data, read_only=True)
    try:
        user_counts = {
            u: 0 if raw is None else UserState.from_bytes(raw).count
            for u, raw in zip(users, store.get_states("user", users), strict=True)
        }
        item_counts = {
            i: 0 if raw is None else sum(ItemState.from_bytes(raw).totals)
            for i, raw in zip(items, store.get_states("item", items), strict=True)
        }
        return user_counts, item_counts
    finally:
        store.close()


def _raw_states(data: Path, users: list[str], items: list[str]) -> tuple[list, list]:
    store = VersionedVectorStore(data, read_only=True)
    try:
        return store.get_states("user", users), store.get_states("item", items)
    finally:
        store.close()


def test_two_workers_share_partitions_and_one_takes_over_after_kill_minus_9(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path, report
) -> None:  # type: ignore[no-untyped-def]
    args = ["--scale-out", "--partitions", str(PARTITIONS)]
    a = WorkerProcess(tmp_path / "a", trained_registry, broker.bootstrap, TOPIC, args)
    b = WorkerProcess(tmp_path / "b", trained_registry, broker.bootstrap, TOPIC, args)
    reader = Reader()
    with a.start(), b.start():
        everything = set(range(PARTITIONS))
        wait_until(
            lambda: _owned(a)[0] | _owned(b)[0] == everything
            and _owned(a)[1] | _owned(b)[1] == everything
            and _owned(a)[0]
            and _owned(b)[0],
            timeout_s=60,
        )
        reader.nodes = {"a": a.api, "b": b.api}
        reader.start()
        first = Producer(broker.bootstrap, 8_000, 800.0, round_=0)
        first.start()
        time.sleep(4.0)
        applied_from_a = b.metric("embstream_changelog_batches_applied_total")
        served_before_kill = len(reader.served)
        del reader.nodes["a"]
        assert a.process is not None
        a.process.send_signal(signal.SIGKILL)
        a.process.wait()
        a.process = None
        killed = time.monotonic()
        wait_until(lambda: _owned(b) == (everything, everything), timeout_s=60, interval_s=0.05)
        takeover_s = time.monotonic() - killed
        first.join()

        users = sorted({f"s{n}" for n in range(USERS)})
        items = sorted({f"si{n}" for n in range(ITEMS)})
        expected_users = Counter(e["user_id"] for e in first.sent)
        expected_items = Counter(e["item_id"] for e in first.sent)
        wait_until(
            lambda: _states(b.data_dir, users, items) == (
                {u: expected_users.get(u, 0) for u in users},
                {i: expected_items.get(i, 0) for i in items},
            ),
            timeout_s=90,
            interval_s=0.5,
        )
        caught_up_s = time.monotonic() - killed

        # A comes back with its own (older) store and takes part of the work again.
        restarted = time.monotonic()
        a.start()
        reader.nodes["a"] = a.api
        wait_until(
            lambda: _owned(a)[0] and _owned(a)[0] | _owned(b)[0] == everything, timeout_s=60, interval_s=0.1
        )
        rejoined_s = time.monotonic() - restarted
        second = Producer(broker.bootstrap, 2_000, 1_000.0, round_=1)
        second.start()
        second.join()
        expected_users += Counter(e["user_id"] for e in second.sent)
        expected_items += Counter(e["item_id"] for e in second.sent)
        expected = (
            {u: expected_users.get(u, 0) for u in users},
            {i: expected_items.get(i, 0) for i in items},
        )
        for worker in (a, b):
            wait_until(lambda w=worker: _states(w.data_dir, users, items) == expected, timeout_s=90, interval_s=0.5)
        reader.stop.set()
        reader.join()
        a_fenced = a.metric("embstream_batches_fenced_total")
        assert a.stop() == 0
        assert b.stop() == 0

    assert applied_from_a > 0, "B did not follow A's changelog while both ran"
    assert served_before_kill > 0
    assert reader.failures == [], reader.failures[:10]
    assert _raw_states(a.data_dir, users, items) == _raw_states(b.data_dir, users, items)
    assert takeover_s < 30
    report(
        events_produced=len(first.sent) + len(second.sent),
        lookups=reader.lookups,
        failed_lookups=len(reader.failures),
        seconds_kill_to_all_partitions_owned=round(takeover_s, 1),
        seconds_kill_to_every_event_applied=round(caught_up_s, 1),
        seconds_restart_to_sharing_again=round(rejoined_s, 1),
        batches_fenced=int(a_fenced),
    )
