"""Hot swaps on the real broker and RocksDB, while events flow and readers read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.registry import EncoderRegistry
from stream.cli.swap import read_rollout
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.producer import send_records
from tests.conftest import WorkerProcess, http_json, wait_until
from tests.faults.streams import vectors_match_states

pytestmark = pytest.mark.integration


def _swap(
    worker: WorkerProcess, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "swap",
            *args,
            "--broker",
            worker.broker,
            "--registry",
            str(worker.registry),
            "--control-topic",
            f"{worker.topic}.control",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _events(users: range, items: int, seed: int) -> list[tuple[bytes, bytes]]:
    now = int(time.time() * 1000)
    return [
        (
            f"u{n}".encode(),
            json.dumps(
                {"user_id": f"u{n}", "item_id": f"i{(n * 7 + seed) % items}", "type": "click", "ts": now}
            ).encode(),
        )
        for n in users
    ]


class Load:
    """A producer and a reader running against a worker until stopped."""

    def __init__(self, worker: WorkerProcess, users: int) -> None:
        self.worker, self.users = worker, users
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.reads = 0
        self.versions_seen: set[int] = set()
        self.recommendation_versions: set[int] = set()
        self.threads = [threading.Thread(target=self._produce), threading.Thread(target=self._read)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _produce(self) -> None:
        round_ = 0
        while not self.stop.is_set():
            send_records(
                [self.worker.broker], self.worker.topic, _events(range(0, self.users, 3), 500, round_)
            )
            round_ += 1
            time.sleep(0.2)

    def _read(self) -> None:
        ids = [f"u{n}" for n in range(0, 60)]
        items = [f"i{n}" for n in range(0, 60)]
        while not self.stop.is_set():
            status, body = http_json("GET", f"{self.worker.api}/v1/embeddings/user/u3")
            if status != 200:
                self.failures.append(f"single read {status} {body}")
            for kind, batch in (("user", ids), ("item", items)):
                status, body = http_json(
                    "POST", f"{self.worker.api}/v1/embeddings/{kind}/batch", {"ids": batch}
                )
                if status != 200:
                    self.failures.append(f"batch {status} {body}")
                    continue
                versions = {r["version"] for r in body["results"] if r is not None}
                if len(versions) > 1 or (versions and versions != {body["version"]}):
                    self.failures.append(f"mixed versions in one batch: {versions}")
                if any(r is None for r in body["results"]):
                    self.failures.append(f"missing {kind} at version {body['version']}")
                self.versions_seen |= versions
            self._recommend(ids[:20])
            self.reads += 1

    def _recommend(self, users: list[str]) -> None:
        """Every answer names one version, for the user vector and all the items."""
        status, body = http_json(
            "POST", f"{self.worker.api}/v1/recommendations/batch", {"user_ids": users, "k": 5}
        )
        if status != 200:
            self.failures.append(f"recommendations {status} {body}")
            return
        version = body["version"]
        self.recommendation_versions.add(version)
        if any(r is None or r["version"] != version or len(r["items"]) != 5 for r in body["results"]):
            self.failures.append(f"recommendations missing, short or of another version than {version}")


def _scores_match_the_store(worker: WorkerProcess, version: int, users: list[str]) -> int:
    """Once writes are quiet: each recommended item's score is the user's vector of
    ``version`` times the item's vector of ``version``. Returns how many scores were checked."""
    checked = 0
    for user_id in users:
        status, body = http_json("GET", f"{worker.api}/v1/recommendations/{user_id}?k=5&version={version}")
        assert status == 200 and body["version"] == version, body
        _, user = http_json("GET", f"{worker.api}/v1/embeddings/user/{user_id}?version={version}")
        ids = [item["id"] for item in body["items"]]
        _, items = http_json(
            "POST", f"{worker.api}/v1/embeddings/item/batch", {"ids": ids, "version": version}
        )
        for item, vector in zip(body["items"], items["results"], strict=True):
            expected = sum(a * b for a, b in zip(user["vector"], vector["vector"], strict=True))
            assert abs(expected - item["score"]) < 1e-4, (version, user_id, item, expected)
            checked += 1
    return checked


def _quiet(worker: WorkerProcess) -> None:
    """Wait until the worker has applied everything produced (its consumed count stands still)."""
    last = -1.0

    def settled() -> bool:
        nonlocal last
        now = worker.metric("embstream_events_consumed_total")
        done, last = now == last, now
        return done

    wait_until(settled, timeout_s=30, interval_s=1.0)


@pytest.fixture
def worker(
    broker: EmbeddedBroker, swap_registry: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WorkerProcess]:
    topic = f"swap-{request.node.name[:40]}"
    running = WorkerProcess(
        tmp_path / "data", swap_registry, broker.bootstrap, topic, ["--encoder-version", "1"]
    ).start()
    send_records([broker.bootstrap], topic, _events(range(0, 600), 500, 0))
    wait_until(
        lambda: (
            http_json("GET", f"{running.api}/v1/embeddings/item/i59")[0] == 200
            and http_json("GET", f"{running.api}/v1/embeddings/user/u599")[0] == 200
        ),
        timeout_s=30,
    )
    yield running
    if running.process is not None:
        running.stop()


def _all_present(worker: WorkerProcess) -> bool:
    """Every user and item a :class:`Load` reads has a vector on ``worker``."""
    for kind, ids in (("user", [f"u{n}" for n in range(60)]), ("item", [f"i{n}" for n in range(60)])):
        status, body = http_json("POST", f"{worker.api}/v1/embeddings/{kind}/batch", {"ids": ids})
        if status != 200 or any(result is None for result in body["results"]):
            return False
    return True


def _serving(worker: WorkerProcess) -> int:
    return http_json("GET", f"{worker.api}/v1/versions")[1]["serving_version"]


def _backfilled(worker: WorkerProcess, version: int) -> bool:
    state, _ = read_rollout([worker.broker], f"{worker.topic}.control")
    return state.backfill_complete(version)


def test_stage_promote_rollback_under_load_never_fail_or_mix(worker: WorkerProcess) -> None:
    with Load(worker, users=600) as load:
        staged = _swap(worker, "stage", "2")
        assert staged.returncode == 0, staged.stderr
        assert "applied" in staged.stderr
        wait_until(lambda: _backfilled(worker, 2), timeout_s=60)
        status = json.loads(_swap(worker, "status").stdout)
        assert status["staged_version"] == 2 and status["backfill_complete"] is True
        promoted = _swap(worker, "promote")
        assert promoted.returncode == 0, promoted.stderr
        wait_until(lambda: _serving(worker) == 2, timeout_s=20)
        time.sleep(1.0)
        send_records([worker.broker], worker.topic, _events(range(5000, 5001), 500, 1))  # a new user
        wait_until(lambda: http_json("GET", f"{worker.api}/v1/embeddings/user/u5000")[0] == 200, timeout_s=20)
        status_code, old = http_json("GET", f"{worker.api}/v1/embeddings/user/u3?version=1")
        assert status_code == 200 and old["version"] == 1 and len(old["vector"]) == 64
        # version 1 is the retained previous version: a new user gets a native vector of it too
        status_code, pinned = http_json("GET", f"{worker.api}/v1/embeddings/user/u5000?version=1")
        assert status_code == 200 and pinned["source"] == "native" and len(pinned["vector"]) == 64
        rolled = _swap(worker, "rollback")
        assert rolled.returncode == 0, rolled.stderr
        wait_until(lambda: _serving(worker) == 1, timeout_s=20)
        time.sleep(1.0)
    assert load.failures == [], load.failures[:5]
    assert load.reads > 10 and load.versions_seen == {1, 2}
    assert load.recommendation_versions == {1, 2}
    _quiet(worker)
    users = [f"u{n}" for n in range(0, 30, 3)]
    assert _scores_match_the_store(worker, 1, users) + _scores_match_the_store(worker, 2, users) == 100
    status_code, _ = http_json("GET", f"{worker.api}/v1/embeddings/user/u3?version=3")
    assert status_code == 404  # v3 was never written: not held, and newer than serving


def _promote_2(worker: WorkerProcess) -> None:
    assert _swap(worker, "stage", "2").returncode == 0
    wait_until(lambda: _backfilled(worker, 2), timeout_s=60)
    promoted = _swap(worker, "promote")
    assert promoted.returncode == 0, promoted.stderr
    wait_until(lambda: _serving(worker) == 2, timeout_s=20)


def _read(worker: WorkerProcess, user: str, version: int) -> dict:
    status, body = http_json("GET", f"{worker.api}/v1/embeddings/user/{user}?version={version}")
    assert status == 200, body
    return body


def _changes(worker: WorkerProcess, user: str, version: int, before: dict, seed: int) -> dict:
    """Send ``user`` an event; the read at ``version`` answers a newer vector within 20 s."""
    started = time.monotonic()
    send_records([worker.broker], worker.topic, _events(range(int(user[1:]), int(user[1:]) + 1), 500, seed))
    after = wait_until(
        lambda: (lambda now: now if now["updated_at"] > before["updated_at"] else None)(
            _read(worker, user, version)
        ),
        timeout_s=20,
    )
    assert time.monotonic() - started < 20
    assert after["vector"] != before["vector"] and after["version"] == version
    return after


def test_pinned_reads_stay_fresh_after_a_promote_and_a_rollback_serves_fresh_vectors(
    worker: WorkerProcess,
) -> None:
    with Load(worker, users=600) as load:  # events for every third user, and readers
        _promote_2(worker)
        status = json.loads(_swap(worker, "status").stdout)
        assert status["serving_version"] == 2 and status["retained_versions"] == [1]
        for n, user in enumerate(("u1", "u4", "u7")):  # users the load leaves alone
            pinned = _changes(worker, user, 1, _read(worker, user, 1), seed=100 + n)
            assert pinned["source"] == "native"  # written on every refresh: version 1 is retained
    assert load.failures == [], load.failures[:5]
    # events for many users while version 2 serves, then back to version 1
    send_records([worker.broker], worker.topic, _events(range(0, 600, 2), 500, 7))
    _quiet(worker)
    rolled = _swap(worker, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    wait_until(lambda: _serving(worker) == 1, timeout_s=20)
    status = json.loads(_swap(worker, "status").stdout)
    assert status["retained_versions"] == [2]  # the roles swap: version 2 is now kept fresh
    assert worker.stop() == 0
    users = [f"u{n}" for n in range(0, 600, 2)]
    # every version-1 vector is what version 1's encoder gives for the user's state now
    assert vectors_match_states(worker.data_dir, worker.registry, users, version=1) == 0
    assert vectors_match_states(worker.data_dir, worker.registry, users, version=2) == 0


def test_a_retired_version_is_read_through_the_aligner_and_not_rolled_back_to(worker: WorkerProcess) -> None:
    _promote_2(worker)
    retired = _swap(worker, "retire", "1")
    assert retired.returncode == 0, retired.stderr
    assert "one encoder pass" in retired.stderr
    wait_until(lambda: json.loads(_swap(worker, "status").stdout)["retained_versions"] == [], timeout_s=20)
    wait_until(
        lambda: http_json("GET", f"{worker.api}/v1/versions")[1]["rollout"]["retained_versions"] == [],
        timeout_s=20,
    )
    before = _read(worker, "u1", 1)
    assert before["source"] == "native"  # written up to the retire, as fresh as the serving entry
    after = _changes(worker, "u1", 1, before, seed=200)
    assert after["source"] == "aligned"  # never the stale native entry
    serving = _read(worker, "u1", 2)
    assert after["updated_at"] == serving["updated_at"]
    again = _swap(worker, "retire", "1")
    assert again.returncode != 0 and "not kept fresh" in again.stderr
    refused = _swap(worker, "rollback")
    assert refused.returncode != 0 and "was retired" in refused.stderr
    assert _serving(worker) == 2


def _sources(worker: WorkerProcess, version: int | None = None) -> dict[str, int]:
    """How many of the 600 users and 500 items read at ``version`` come from each source."""
    counts: dict[str, int] = {}
    for kind, ids in (("user", [f"u{n}" for n in range(600)]), ("item", [f"i{n}" for n in range(500)])):
        status, body = http_json(
            "POST", f"{worker.api}/v1/embeddings/{kind}/batch", {"ids": ids, "version": version}
        )
        assert status == 200, body
        for row in body["results"]:
            source = "missing" if row is None else row["source"]
            counts[source] = counts.get(source, 0) + 1
    return counts


def test_an_instant_promote_serves_forward_vectors_while_the_backfill_turns_them_native(
    worker: WorkerProcess,
) -> None:
    staged_at = time.monotonic()
    staged = _swap(worker, "stage", "2", "--rate", "40")  # a native backfill of about 30 s
    assert staged.returncode == 0, staged.stderr
    state = wait_until(
        lambda: (lambda s: s if s.promotable(2) else None)(
            read_rollout([worker.broker], f"{worker.topic}.control")[0]
        ),
        timeout_s=60,
    )
    promotable_s = time.monotonic() - staged_at
    assert not state.backfill_complete(2)  # promotable long before the native backfill is done
    status = json.loads(_swap(worker, "status").stdout)
    assert status["promote_after"] == "forward" and status["promotable"] is True
    assert any("forward" in kinds for kinds in status["backfill"].values())
    _, versions = http_json("GET", f"{worker.api}/v1/versions")
    assert versions["rollout"]["backfill"]["forward"]["complete"] is True
    assert versions["rollout"]["backfill"]["user"]["complete"] is False  # shown apart
    metrics = http_json("GET", f"{worker.api}/metrics")[1]
    assert 'embstream_backfill_entities{kind="forward",state="done"}' in metrics
    promoted = _swap(worker, "promote")
    assert promoted.returncode == 0, promoted.stderr
    wait_until(lambda: _serving(worker) == 2, timeout_s=20)
    early = _sources(worker)
    # every user and item reads at version 2, most of them carried forward so far
    assert early.get("missing", 0) == 0 and early.get("forward", 0) > 500, early
    status_code, body = http_json(
        "POST", f"{worker.api}/v1/recommendations/batch", {"user_ids": [f"u{n}" for n in range(20)], "k": 5}
    )
    assert status_code == 200 and body["version"] == 2
    assert all(r is not None and r["version"] == 2 and len(r["items"]) == 5 for r in body["results"])
    assert {r["user_vector"] for r in body["results"]} <= {"forward", "native"}
    index = http_json("GET", f"{worker.api}/healthz")[1]["item_indexes"]["2"]
    assert index["forward_items"] > 0 and index["items"] == 500
    serving_backfill = json.loads(_swap(worker, "status").stdout)["serving_backfill"]
    assert serving_backfill, "the native backfill goes on after the promote"
    refused = _swap(worker, "stage", "3", "--rate", "1")  # it would stop that backfill
    assert refused.returncode == 2 and "still being backfilled" in refused.stderr
    _, versions = http_json("GET", f"{worker.api}/v1/versions")
    assert set(versions["rollout"]["backfill"]) == {"user", "item"}  # the native backfill goes on
    # the throttled native backfill replaces the forward entries as it goes
    middle = wait_until(
        lambda: (lambda c: c if 0 < c.get("forward", 0) < early["forward"] else None)(_sources(worker)),
        timeout_s=60,
    )
    assert middle.get("native", 0) > early.get("native", 0)
    done = wait_until(
        lambda: (lambda c: c if c.get("native", 0) == 1100 else None)(_sources(worker)), timeout_s=120
    )
    assert done == {"native": 1100}
    index = http_json("GET", f"{worker.api}/healthz")[1]["item_indexes"]["2"]
    assert index["forward_items"] == 0 and index["items"] == 500
    assert promotable_s < 30  # well before the ~30 s native backfill


def test_a_version_whose_forward_transform_fails_its_ecc_is_promoted_only_after_its_backfill(
    worker: WorkerProcess,
) -> None:
    # version 3 was trained without alignment: its forward transform fails its ECC
    report = EncoderRegistry(worker.registry).report(3)
    assert report is not None and report["forward"]["ecc"] is False
    staged = _swap(worker, "stage", "3", "--force", "--rate", "100")
    assert staged.returncode == 0, staged.stderr
    status = wait_until(
        lambda: (lambda s: s if s["backfill"] else None)(json.loads(_swap(worker, "status").stdout)),
        timeout_s=30,
    )
    assert status["promote_after"] == "native" and status["promotable"] is False
    assert not any("forward" in kinds for kinds in status["backfill"].values())
    refused = _swap(worker, "promote")
    assert refused.returncode == 2 and "not filled yet" in refused.stderr
    wait_until(lambda: _backfilled(worker, 3), timeout_s=60)
    assert json.loads(_swap(worker, "status").stdout)["promotable"] is True
    assert _swap(worker, "cancel").returncode == 0


def test_gate_and_hash_failures_are_refused_and_change_nothing(worker: WorkerProcess, tmp_path: Path) -> None:
    refused = _swap(worker, "stage", "3")
    assert refused.returncode == 2 and "not swappable" in refused.stderr
    tampered = tmp_path / "tampered"
    shutil.copytree(worker.registry, tampered)
    weights = tampered / "v2" / "weights.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "swap",
            "stage",
            "2",
            "--broker",
            worker.broker,
            "--registry",
            str(tampered),
            "--control-topic",
            f"{worker.topic}.control",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "does not match" in result.stderr
    state, messages = read_rollout([worker.broker], f"{worker.topic}.control")
    assert state.staged is None and state.serving == 1
    assert not any(m.get("op") == "stage" for m in messages)
    assert _serving(worker) == 1


def test_with_a_control_key_signed_commands_apply_and_forged_ones_do_not(
    broker: EmbeddedBroker, swap_registry: Path, tmp_path: Path
) -> None:
    from kafka import KafkaProducer

    from stream.rollout.messages import ControlCodec, control_message

    key = {"EMBSTREAM_CONTROL_KEY": "swap-key"}
    topic = "swap-signed"
    with WorkerProcess(
        tmp_path / "data", swap_registry, broker.bootstrap, topic, ["--encoder-version", "1"], env=key
    ).start() as worker:
        send_records([broker.bootstrap], topic, _events(range(0, 50), 20, 0))
        wait_until(lambda: http_json("GET", f"{worker.api}/v1/embeddings/user/u49")[0] == 200, timeout_s=30)
        staged = _swap(worker, "stage", "2", env=key)
        assert staged.returncode == 0 and "applied" in staged.stderr, staged.stderr
        wait_until(lambda: _backfilled(worker, 2), timeout_s=60)
        producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
        forged = ControlCodec("wrong").encode(control_message("promote", version=2, force=True))
        producer.send(f"{topic}.control", forged, partition=0)
        producer.flush()
        producer.close()
        wait_until(
            lambda: worker.metric('embstream_control_rejected_total{reason="forged"}') == 1, timeout_s=30
        )
        assert _serving(worker) == 1
        promoted = _swap(worker, "promote", env=key)
        assert promoted.returncode == 0, promoted.stderr
        wait_until(lambda: _serving(worker) == 2, timeout_s=20)
        assert worker.stop() == 0


def test_a_swap_with_two_scale_out_workers_moves_both_and_keeps_replicas_equal(
    broker: EmbeddedBroker, swap_registry: Path, tmp_path: Path
) -> None:
    """Each node backfills its whole replica; promote waits for both; both serve v2, old
    versions stay reachable on both, and no read fails or mixes versions on either node."""
    topic = "swap-scale-out"
    args = ["--encoder-version", "1", "--scale-out"]
    a = WorkerProcess(tmp_path / "a", swap_registry, broker.bootstrap, topic, args)
    b = WorkerProcess(tmp_path / "b", swap_registry, broker.bootstrap, topic, args)
    with a, b:  # both killed on the way out, even if the second fails to start
        a.start()
        b.start()
        send_records([broker.bootstrap], topic, _events(range(0, 600), 500, 0))
        for node in (a, b):  # every id the loads read, on both nodes (items come one hop later)
            wait_until(lambda n=node: _all_present(n), timeout_s=60)
        with Load(a, users=600) as load_a, Load(b, users=600) as load_b:
            staged = _swap(a, "stage", "2")
            assert staged.returncode == 0, staged.stderr
            wait_until(lambda: _backfilled(a, 2), timeout_s=90)
            status = json.loads(_swap(a, "status").stdout)
            assert len(status["workers_seen"]) == 2 and status["backfill_complete"] is True
            promoted = _swap(a, "promote")
            assert promoted.returncode == 0, promoted.stderr
            wait_until(lambda: _serving(a) == 2 and _serving(b) == 2, timeout_s=30)
            send_records([broker.bootstrap], topic, _events(range(5000, 5001), 500, 1))
            for node in (a, b):
                wait_until(
                    lambda n=node: http_json("GET", f"{n.api}/v1/embeddings/user/u5000")[0] == 200,
                    timeout_s=30,
                )
            time.sleep(1.0)
        assert load_a.failures == [] and load_b.failures == [], (load_a.failures + load_b.failures)[:5]
        assert load_a.versions_seen == {1, 2} or load_a.versions_seen == {2}
        assert 2 in load_b.versions_seen
        ids = [f"u{n}" for n in range(0, 600, 7)] + ["u5000"]

        def largest_difference() -> float:
            answers = []
            for node in (a, b):
                status_code, body = http_json("POST", f"{node.api}/v1/embeddings/user/batch", {"ids": ids})
                assert status_code == 200 and body["version"] == 2
                assert all(result is not None for result in body["results"])
                answers.append([result["vector"] for result in body["results"]])
            return max(abs(x - y) for u, v in zip(*answers, strict=True) for x, y in zip(u, v, strict=True))

        # Once the last events have reached both nodes, both hold the same vectors: written by
        # the owner, or encoded by each replica's backfill from the same state.
        wait_until(lambda: largest_difference() < 1e-4, timeout_s=30)
        users = [f"u{n}" for n in range(0, 30, 3)]
        for node in (a, b):  # recommendations at the new version, from each node's own index
            assert _scores_match_the_store(node, 2, users) == 50
        for node in (a, b):
            status_code, old = http_json("GET", f"{node.api}/v1/embeddings/user/u3?version=1")
            assert status_code == 200 and old["version"] == 1
