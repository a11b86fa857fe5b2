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
import subprocess
import sys
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
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.kafka.topics import ensure_topics
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


def _wait_for_counts(worker: WorkerProcess, users: list[str], items: list[str], expected: tuple) -> None:
    """Wait until ``worker``'s store holds exactly ``expected``; say what differs if not."""
    try:
        wait_until(lambda: _states(worker.data_dir, users, items) == expected, timeout_s=90, interval_s=0.5)
    except AssertionError:
        held = _states(worker.data_dir, users, items)
        differ = {
            kind: {k: (v, want[k]) for k, v in got.items() if v != want[k]}
            for kind, got, want in (("users", held[0], expected[0]), ("items", held[1], expected[1]))
        }
        figures = ""
        if worker.process is not None:
            _, text = http_json("GET", f"{worker.api}/metrics")
            figures = "\n".join(line for line in text.splitlines() if "changelog" in line or "fenced" in line)
        raise AssertionError(
            f"{worker.data_dir.name}: (held, expected) {differ}\n{figures}\n{worker.log()[-3000:]}"
        ) from None


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
    with a, b:  # both killed on the way out, even if the second fails to start
        a.start()
        b.start()
        everything = set(range(PARTITIONS))
        wait_until(
            lambda: (
                _owned(a)[0] | _owned(b)[0] == everything
                and _owned(a)[1] | _owned(b)[1] == everything
                and _owned(a)[0]
                and _owned(b)[0]
            ),
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
            lambda: (
                _states(b.data_dir, users, items)
                == (
                    {u: expected_users.get(u, 0) for u in users},
                    {i: expected_items.get(i, 0) for i in items},
                )
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
            _wait_for_counts(worker, users, items, expected)
        reader.stop.set()
        reader.join()
        for worker in (a, b):
            assert http_json("GET", f"{worker.api}/readyz") == (
                200,
                {"ready": True, "reason": "holds every partition's vectors"},
            )
        a_fenced = a.metric("embstream_batches_fenced_total")
        # A worker that stops leaves the group at once: no session timeout to wait for.
        leaving = time.monotonic()
        assert a.stop() == 0
        wait_until(lambda: _owned(b) == (everything, everything), timeout_s=30, interval_s=0.05)
        left_s = time.monotonic() - leaving
        assert b.stop() == 0

    assert applied_from_a > 0, "B did not follow A's changelog while both ran"
    assert served_before_kill > 0
    assert reader.failures == [], reader.failures[:10]
    assert _raw_states(a.data_dir, users, items) == _raw_states(b.data_dir, users, items)
    assert takeover_s < 30
    assert left_s < 6.0, "a stopping worker's partitions waited for the session timeout"
    report(
        events_produced=len(first.sent) + len(second.sent),
        lookups=reader.lookups,
        failed_lookups=len(reader.failures),
        seconds_kill_to_all_partitions_owned=round(takeover_s, 1),
        seconds_kill_to_every_event_applied=round(caught_up_s, 1),
        seconds_restart_to_sharing_again=round(rejoined_s, 1),
        seconds_sigterm_to_all_partitions_owned=round(left_s, 1),
        batches_fenced=int(a_fenced),
    )


def test_a_worker_frozen_past_its_session_is_fenced_and_rejoins_consistent(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path, report
) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP one worker for longer than the session timeout while events flow: the other
    takes its partitions; when the frozen one resumes, whatever it had in flight is fenced
    (dropped by every reader, never committed), and both end with the same exact state."""
    global TOPIC
    args = ["--scale-out", "--partitions", str(PARTITIONS), "--topic", "zombie-interactions"]
    saved, TOPIC = TOPIC, "zombie-interactions"
    try:
        a = WorkerProcess(tmp_path / "a", trained_registry, broker.bootstrap, TOPIC, args)
        b = WorkerProcess(tmp_path / "b", trained_registry, broker.bootstrap, TOPIC, args)
        with a, b:  # both killed on the way out, even if the second fails to start
            a.start()
            b.start()
            everything = set(range(PARTITIONS))
            wait_until(lambda: _owned(a)[0] and _owned(b)[0], timeout_s=60)
            load = Producer(broker.bootstrap, 9_000, 600.0, round_=2)
            load.start()
            time.sleep(3.0)
            assert a.process is not None
            a.process.send_signal(signal.SIGSTOP)
            frozen = time.monotonic()
            wait_until(lambda: _owned(b) == (everything, everything), timeout_s=60, interval_s=0.05)
            takeover_s = time.monotonic() - frozen
            time.sleep(2.0)
            a.process.send_signal(signal.SIGCONT)
            wait_until(lambda: _owned(a)[0], timeout_s=60, interval_s=0.1)
            load.join()
            users = sorted({f"s{n}" for n in range(USERS)})
            items = sorted({f"si{n}" for n in range(ITEMS)})
            expected = (
                {u: c for u, c in ((u, sum(1 for e in load.sent if e["user_id"] == u)) for u in users)},
                {i: c for i, c in ((i, sum(1 for e in load.sent if e["item_id"] == i)) for i in items)},
            )
            for worker in (a, b):
                _wait_for_counts(worker, users, items, expected)
            fenced = a.metric("embstream_batches_fenced_total")
            skipped = b.metric("embstream_changelog_skipped_total")
            assert a.stop() == 0
            assert b.stop() == 0
        assert _raw_states(a.data_dir, users, items) == _raw_states(b.data_dir, users, items)
        report(
            events_produced=len(load.sent),
            seconds_frozen_to_all_partitions_owned=round(takeover_s, 1),
            batches_fenced_on_resume=int(fenced),
            changelog_records_dropped_by_peer=int(skipped),
        )
    finally:
        TOPIC = saved


def test_scale_out_refuses_topics_with_different_partition_counts(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    ensure_topics([broker.bootstrap], {"uneven": 4, "uneven.by-item": 2})
    command = [
        sys.executable,
        "-m",
        "stream.cli",
        "run",
        "--scale-out",
        "--broker",
        broker.bootstrap,
        "--topic",
        "uneven",
        "--data-dir",
        str(tmp_path / "data"),
        "--registry",
        str(trained_registry),
        "--api-port",
        str(free_port()),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2, finished.stderr
    assert "uneven has 4, uneven.by-item has 2" in finished.stderr
    assert "Traceback" not in finished.stderr
