"""A hostile client against a running worker, through the real broker and real RocksDB.

The property, for every scenario: the worker stays alive, every valid event is applied
exactly once, every bad record is in the dead-letter topic with a reason, and a restart
succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from models.features import EVENT_TYPES, UserState
from store.vector_store import VersionedVectorStore
from stream.ingest.events import MAX_EVENT_BYTES, MAX_EVENT_DEPTH, MIN_TIMESTAMP_MS
from stream.ingest.poison import POISON_CRASHED
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.producer import send_records
from stream.kafka.topics import ensure_topics
from tests.conftest import WorkerProcess, http_json, read_topic, wait_until
from tests.faults.streams import send_sentinels, wait_users

pytestmark = [pytest.mark.integration, pytest.mark.faults]

IN_CI = bool(os.environ.get("CI"))
NOW_MS = int(time.time() * 1000)
CRASHING_WORKER = str(Path(__file__).with_name("crashing_worker.py"))

# ----- records a hostile producer sends, each with its verdict ---------------------------------

_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
#: Any JSON value nested well within the bound (extra fields may hold them).
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
_extras = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ("user_id", "item_id", "type", "value", "ts")),
    _json,
    max_size=3,
)


@st.composite
def valid_record(draw: st.DrawFn, key: str) -> bytes:
    """A valid event of user ``key``: odd ids, numbers and extra fields, any JSON spelling."""
    event: dict[str, Any] = {
        "user_id": key,
        "item_id": draw(_ids),
        "type": draw(st.sampled_from(EVENT_TYPES)),
    }
    value = draw(
        st.none() | st.floats(width=32, allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6)
    )
    if value is not None or draw(st.booleans()):
        event["value"] = value
    if draw(st.booleans()):
        event["ts"] = draw(st.integers(MIN_TIMESTAMP_MS, NOW_MS))
    event.update(draw(_extras))
    fields = list(event.items())
    order = draw(st.permutations(range(len(fields))))
    text = json.dumps(dict(fields[i] for i in order), ensure_ascii=draw(st.booleans()))
    return text.encode()


def _with(base: dict[str, Any], tail: bytes) -> bytes:
    """``base`` as JSON with ``tail`` (raw bytes) added as its last member."""
    return json.dumps(base).encode()[:-1] + b", " + tail + b"}"


@st.composite
def bad_record(draw: st.DrawFn, key: str) -> bytes | None:
    """A record the contract refuses, in one of the ways a hostile producer finds."""
    base = {"user_id": key, "item_id": draw(_ids), "type": "click"}
    depth = draw(st.integers(MAX_EVENT_DEPTH + 1, 5_000))
    kinds: list[Callable[[], bytes | None]] = [
        lambda: _with(base, b'"x": ' + b"[" * depth + b"]" * depth),  # nested too deep
        lambda: _with(base, b'"x": ' + b'{"a":' * depth + b"1" + b"}" * depth),
        lambda: _with(base, b'"user_id": "' + draw(_ids).encode() + b'"'),  # duplicate key
        lambda: _with(base, b'"x": 1, "x": 2'),
        lambda: _with(base, b'"ts": ' + str(draw(st.integers(10**14, 10**400))).encode()),  # huge numbers
        lambda: _with(
            base, b'"value": ' + draw(st.sampled_from([b"1e400", b"-1e39", b"NaN", b"Infinity", b"1" * 500]))
        ),
        lambda: _with(base, b'"ts": ' + draw(st.sampled_from([b"1.5e12", b"true", b'"now"', b"-1"]))),
        lambda: (
            json.dumps(base)
            .encode()
            .replace(
                key.encode(),
                key.encode()
                + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\x01", b"\n"])),
            )
        ),  # invalid UTF-8, raw control characters
        lambda: json.dumps(base).encode().replace(key.encode(), key.encode() + b"\\ud800"),  # lone surrogate
        lambda: _with(base, b'"pad": "' + b"p" * (MAX_EVENT_BYTES + 10) + b'"'),  # too large
        lambda: b"\xff" + draw(st.binary(max_size=200)),  # not JSON at all
        lambda: json.dumps(
            draw(st.lists(_json, max_size=3) | st.integers() | st.text())
        ).encode(),  # not an object
        lambda: None,  # a tombstone
    ]
    return draw(st.sampled_from(kinds))()


@st.composite
def hostile_batch(draw: st.DrawFn, prefix: str) -> list[tuple[str, bytes | None, bool]]:
    """(key, value, valid) for a few dozen records, valid and bad interleaved."""
    records = []
    for n in range(draw(st.integers(20, 60))):
        key = f"{prefix}-{n}"
        if draw(st.booleans()):
            records.append((key, draw(valid_record(key)), True))
        else:
            records.append((key, draw(bad_record(key)), False))
    return records


def _dead_letters(broker: EmbeddedBroker, topic: str) -> dict[str, str]:
    """Key -> reason of every dead letter so far."""
    return {
        record.key.decode(): dict(record.headers)["error"].decode()
        for record in read_topic(broker.bootstrap, f"{topic}.dlq", idle_s=1.0)
        if record.key is not None
    }


def _counts(data_dir: Path, users: list[str]) -> dict[str, int]:
    store = VersionedVectorStore(data_dir, read_only=True)
    try:
        return {
            u: 0 if s is None else UserState.from_bytes(s).count
            for u, s in zip(users, store.get_states("user", users), strict=True)
        }
    finally:
        store.close()


def test_hostile_events_never_stop_the_worker(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path, report
) -> None:  # type: ignore[no-untyped-def]
    topic = "hostile-events"
    ensure_topics([broker.bootstrap], {topic: 4, f"{topic}.dlq": 1})
    data = tmp_path / "data"
    valid: list[str] = []
    bad: dict[str, bytes | None] = {}
    with WorkerProcess(data, trained_registry, broker.bootstrap, topic).start() as worker:
        rounds = iter(range(1_000))

        @seed(20261204)
        @settings(
            max_examples=4,
            deadline=None,
            derandomize=IN_CI,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def round_trip(data: st.DataObject) -> None:
            prefix = f"h{next(rounds)}"
            records = data.draw(hostile_batch(prefix))
            send_records([broker.bootstrap], topic, [(key.encode(), value) for key, value, _ in records])
            wait_users(worker, send_sentinels(broker.bootstrap, topic, hash(prefix) % 10**6))
            assert worker.process is not None and worker.process.poll() is None
            ours = {
                key: reason
                for key, reason in _dead_letters(broker, topic).items()
                if key.startswith(prefix + "-")
            }
            expected_bad = {key for key, _, ok in records if not ok}
            assert set(ours) == expected_bad, {k: v for k, v, ok in records if (k in ours) == ok}
            assert all(ours.values())  # every dead letter says why
            for key, value, ok in records:
                if ok:
                    status, body = http_json("GET", f"{worker.api}/v1/embeddings/user/{key}")
                    assert status == 200, (key, value, body)
                    valid.append(key)
                else:
                    bad[key] = value

        round_trip()
        rejected = worker.metric("embstream_events_rejected_total")
        assert worker.stop() == 0
        worker.start()  # a restart reads nothing it has not applied and starts cleanly
        assert http_json("GET", f"{worker.api}/v1/embeddings/user/{valid[0]}")[0] == 200
        assert worker.metric("embstream_events_applied_total") == 0  # nothing applied twice
        assert worker.stop() == 0
    counts = _counts(data, valid)
    assert set(counts.values()) == {1}  # every valid event applied exactly once
    assert rejected == len(bad)
    report(valid_events=len(valid), bad_records=len(bad), dead_letters=int(rejected))


def _control(broker: EmbeddedBroker, topic: str, messages: list[bytes]) -> None:
    send_records([broker.bootstrap], topic, [(None, raw) for raw in messages])


def _forged_messages(signed: Callable[[dict[str, Any]], bytes]) -> tuple[list[bytes], int]:
    """Malformed and refused messages of every op; returns them and how many are commands
    a worker must refuse (the rest are malformed)."""

    def message(op: str, **fields: Any) -> dict[str, Any]:
        return {"op": op, "id": f"{op}-{len(fields)}-{time.monotonic_ns()}", "ts": NOW_MS, **fields}

    malformed = [
        b"not json",
        b"[]",
        b"{}",
        b'{"op": 3}',
        b'{"op": "explode"}',
        b'{"op": "stage"' + b"[" * 3000,
        signed(message("progress", worker="x", version="abc", kind="user", done=1, total=2)),
        signed(message("progress", worker="x", version=2, kind="user", done=-1, total=2)),
        signed(message("ack", worker=5, of="x")),
        signed(message("stage", version="2")),
        signed(message("stage", version=2, rate="fast")),
        signed(message("promote", version=1.5)),
        signed(message("promote", version=0)),
        signed(message("rollback", **{"from": None, "to": 1})),
        signed(message("cancel", version=-1)),
        signed(message("worker", worker="x", serving="zz", override=True)),
        signed({"op": "promote", "version": 2}),  # no id
    ]
    refused = [
        signed(message("promote", version=99, force=True)),  # not in the registry
        signed(message("stage", version=99, force=True)),
        signed(message("rollback", **{"from": 1, "to": 99})),
        signed(message("cancel", version=7)),  # nothing staged
        signed(message("promote", version=1)),  # already serving
    ]
    hello = signed(message("worker", worker="intruder", serving=99, override=True))
    return [*malformed, *refused, hello], len(refused) + 1


@pytest.mark.parametrize("key", ["", "control-secret"])
def test_forged_and_malformed_control_messages_never_stop_a_worker(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path, key: str
) -> None:
    from stream.rollout.messages import ControlCodec

    topic = f"hostile-control-{'signed' if key else 'open'}"
    ensure_topics([broker.bootstrap], {topic: 4, f"{topic}.control": 1})
    worker = WorkerProcess(tmp_path / "data", trained_registry, broker.bootstrap, topic)
    worker.env = {"EMBSTREAM_CONTROL_KEY": key} if key else {}
    with worker.start():
        _wait_control_plane(worker)
        codec = ControlCodec(key or None)
        messages, must_refuse = _forged_messages(lambda m: codec.encode(m))
        unsigned = _forged_messages(lambda m: json.dumps(m).encode())[0] if key else []
        _control(broker, f"{topic}.control", messages + unsigned)
        wait_until(lambda: worker.metric("embstream_control_rejected_total") >= len(messages), timeout_s=30)
        assert worker.process is not None and worker.process.poll() is None
        status, versions = http_json("GET", f"{worker.api}/v1/versions")
        rollout = versions["rollout"]
        assert (versions["serving_version"], rollout["serving_version"], rollout["staged_version"]) == (
            1,
            1,
            None,
        )
        assert rollout["previous_version"] != rollout["serving_version"]
        refused = _metric_by_reason(worker, "embstream_control_rejected_total")
        assert refused.get("refused", 0) >= must_refuse
        assert refused.get("malformed", 0) >= len(messages) - must_refuse
        if key:
            assert refused.get("unsigned", 0) >= len(unsigned) - 6  # raw garbage counts as malformed
        assert worker.stop() == 0
        worker.start()  # the replay refuses the same messages: the worker starts, serving 1
        _wait_control_plane(worker)
        status, versions = http_json("GET", f"{worker.api}/v1/versions")
        assert status == 200 and versions["serving_version"] == 1
        assert _metric_by_reason(worker, "embstream_control_rejected_total").get("refused", 0) >= must_refuse
        assert worker.stop() == 0
    status_json = _swap_status(broker, topic, trained_registry, key)
    reasons = {(r["op"], r["version"]): r["reason"] for r in status_json["refused_commands"]}
    assert "not in the registry" in reasons[("promote", 99)]
    assert ("stage", 99) in reasons and ("rollback", 99) in reasons and ("worker", 99) in reasons
    assert status_json["serving_version"] == 1 and status_json["previous_version"] is None


def _wait_control_plane(worker: WorkerProcess) -> None:
    """Until the worker has replayed the control topic (``/v1/versions`` shows its rollout)."""
    wait_until(lambda: http_json("GET", f"{worker.api}/v1/versions")[1]["rollout"] is not None)


def _metric_by_reason(worker: WorkerProcess, name: str) -> dict[str, float]:
    _, text = http_json("GET", f"{worker.api}/metrics")
    found = {}
    for line in text.splitlines():
        if line.startswith(name + '{reason="'):
            label, value = line[len(name) + 9 :].split('"} ')
            found[label] = float(value)
    return found


def _swap_status(broker: EmbeddedBroker, topic: str, registry: Path, key: str) -> dict[str, Any]:
    import subprocess
    import sys

    env = {**os.environ, "EMBSTREAM_CONTROL_KEY": key, "EMBSTREAM_CONTROL_TOPIC": f"{topic}.control"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "swap",
            "status",
            "--broker",
            broker.bootstrap,
            "--registry",
            str(registry),
        ],
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def test_slow_and_abandoned_http_clients_hold_no_worker_slot(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    topic = "hostile-http"
    ensure_topics([broker.bootstrap], {topic: 4})
    worker = WorkerProcess(tmp_path / "data", trained_registry, broker.bootstrap, topic)
    # Room for every slow connection: this is about timeouts (the bound has its own unit test).
    worker.env = {
        "EMBSTREAM_HTTP_HEADER_TIMEOUT_S": "2",
        "EMBSTREAM_HTTP_BODY_TIMEOUT_S": "2",
        "EMBSTREAM_HTTP_MAX_CONNECTIONS": "1000",
    }
    slow: list[socket.socket] = []
    try:
        with worker.start():
            wait_users(worker, send_sentinels(broker.bootstrap, topic, 0))
            port = worker.api_port
            for n in range(500):  # headers that never finish
                connection = socket.create_connection(("127.0.0.1", port))
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Never-Ends-" + str(n).encode())
                slow.append(connection)
            for _ in range(20):  # bodies abandoned half-way
                with socket.create_connection(("127.0.0.1", port)) as connection:
                    connection.sendall(
                        b"POST /v1/embeddings/user/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{"
                    )
            assert (
                http_json("GET", f"{worker.api}/v1/embeddings/user/sentinel-0-0")[0] == 200
            )  # still answering
            started = time.monotonic()
            for connection in slow:
                connection.settimeout(10)
                assert connection.recv(100) == b""  # the worker closed it
            assert time.monotonic() - started < 10
            assert worker.stop() == 0
    finally:
        for connection in slow:
            connection.close()
    log = worker.log()
    assert "Traceback" not in log and "ConnectionResetError" not in log, log[-2000:]


def test_a_record_that_kills_the_worker_twice_is_quarantined(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path, report
) -> None:  # type: ignore[no-untyped-def]
    topic = "hostile-crash"
    ensure_topics([broker.bootstrap], {topic: 1, f"{topic}.dlq": 1})
    worker = WorkerProcess(tmp_path / "data", trained_registry, broker.bootstrap, topic)
    worker.entry = [CRASHING_WORKER]
    worker.env = {"EMBSTREAM_TEST_CRASH_ON": "crash-me"}

    def event(user: str) -> tuple[bytes, bytes]:
        return user.encode(), json.dumps({"user_id": user, "item_id": "i1", "type": "view"}).encode()

    before = [event(f"before-{n}") for n in range(300)]
    after = [event(f"after-{n}") for n in range(300)]
    deaths = 0
    with worker.start():
        send_records([broker.bootstrap], topic, [*before, event("crash-me"), *after])
        for _ in range(2):  # dies in the batch, then again on the very record
            assert worker.process is not None
            assert worker.process.wait(timeout=60) == 70
            deaths += 1
            worker.process = None
            worker.start(wait=False)
        wait_until(lambda: _get_status(worker, "/v1/embeddings/user/after-299") == 200, timeout_s=90)
        assert worker.process is not None and worker.process.poll() is None
        assert worker.metric("embstream_events_quarantined_total") == 1
        assert worker.stop() == 0
    dead = _dead_letters(broker, topic)
    assert dead == {"crash-me": POISON_CRASHED}
    counts = _counts(tmp_path / "data", [key.decode() for key, _ in before + after])
    assert set(counts.values()) == {1}
    report(deaths_before_quarantine=deaths, events_applied=sum(counts.values()), quarantined=len(dead))


def test_a_damaged_sst_file_is_reported_and_never_served_wrong(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    topic = "hostile-sst"
    ensure_topics([broker.bootstrap], {topic: 4})
    data = tmp_path / "data"
    users = [f"d{n}" for n in range(2_000)]
    with WorkerProcess(data, trained_registry, broker.bootstrap, topic).start() as worker:
        send_records(
            [broker.bootstrap],
            topic,
            [
                (u.encode(), json.dumps({"user_id": u, "item_id": "i", "type": "view"}).encode())
                for u in users
            ],
        )
        wait_users(worker, send_sentinels(broker.bootstrap, topic, 0))
        wait_until(lambda: http_json("GET", f"{worker.api}/v1/embeddings/user/{users[-1]}")[0] == 200)
        before = {
            u: http_json("GET", f"{worker.api}/v1/embeddings/user/{u}")[1]["vector"] for u in users[::50]
        }
        assert worker.stop() == 0
        worker.process = None
    store = VersionedVectorStore(data)  # flush everything into SST files, then damage one
    store.compact()
    store.close()
    sst = max(data.glob("*.sst"), key=lambda p: p.stat().st_size)
    raw = bytearray(sst.read_bytes())
    for at in range(len(raw) // 4, len(raw) // 2, 997):
        raw[at] ^= 0x5A
    sst.write_bytes(bytes(raw))
    worker = WorkerProcess(data, trained_registry, broker.bootstrap, topic)
    with worker.start(wait=False):
        try:
            wait_until(
                lambda: (
                    worker.process is not None and (worker.process.poll() is not None or _answers(worker))
                ),
                timeout_s=60,
            )
        finally:
            code = worker.process.poll() if worker.process is not None else None
        if code is None:  # it runs: every answer is the vector it had, or a clear 503
            for user, vector in before.items():
                status, body = http_json("GET", f"{worker.api}/v1/embeddings/user/{user}")
                assert (status == 200 and body["vector"] == vector) or (
                    status == 503 and body["error"] == "store_damaged"
                ), (status, body)
            worker.process.send_signal(signal.SIGTERM)
            worker.process.wait(timeout=30)
            worker.process = None
        else:
            assert code == 2
    log = worker.log()
    assert "Traceback" not in log
    if code is not None:
        assert "is damaged" in log and "embstream store restore" in log


def _get_status(worker: WorkerProcess, path: str) -> int | None:
    """The status of ``GET path``, or ``None`` while nothing listens yet."""
    try:
        return http_json("GET", f"{worker.api}{path}")[0]
    except OSError:
        return None


def _answers(worker: WorkerProcess) -> bool:
    return _get_status(worker, "/healthz") == 200


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch should-never-exist",))


def test_a_version_whose_weights_hold_a_pickled_object_is_refused_everywhere(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    """weights.pt holds a pickled object and the manifest its true sha256 (the file was
    swapped by someone who can write the registry): `swap stage` refuses it, a worker refuses
    a forged stage of it, and restarts."""
    import hashlib
    import shutil
    import subprocess
    import sys

    import torch

    from stream.rollout.messages import control_message

    registry = tmp_path / "registry"
    shutil.copytree(trained_registry, registry)
    shutil.copytree(registry / "v1", registry / "v2")
    weights = registry / "v2" / "weights.pt"
    torch.save({"user_ids.weight": _Payload()}, weights)
    manifest = json.loads((registry / "v2" / "manifest.json").read_text())
    manifest.update(version=2, parent=1, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    (registry / "v2" / "manifest.json").write_text(json.dumps(manifest))
    (registry / "v2" / "report.json").write_text(
        json.dumps({"swappable": True, "consumer_change_pct": {"mean": 0}})
    )
    topic = "hostile-pickle"
    ensure_topics([broker.bootstrap], {topic: 4, f"{topic}.control": 1})
    worker = WorkerProcess(
        tmp_path / "data", registry, broker.bootstrap, topic, extra_args=["--encoder-version", "1"]
    )
    with worker.start():
        staged = subprocess.run(
            [
                sys.executable,
                "-m",
                "stream.cli",
                "swap",
                "stage",
                "2",
                "--force",
                "--broker",
                broker.bootstrap,
                "--registry",
                str(registry),
                "--control-topic",
                f"{topic}.control",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert staged.returncode == 2 and "not a plain tensor file" in staged.stderr, staged.stderr
        _control(
            broker, f"{topic}.control", [json.dumps(control_message("stage", version=2, force=True)).encode()]
        )
        wait_until(
            lambda: _metric_by_reason(worker, "embstream_control_rejected_total").get("refused", 0) >= 1
        )
        _, versions = http_json("GET", f"{worker.api}/v1/versions")
        assert versions["rollout"]["staged_version"] is None and versions["serving_version"] == 1
        assert worker.stop() == 0
        worker.start()
        _wait_control_plane(worker)
        assert http_json("GET", f"{worker.api}/v1/versions")[1]["rollout"]["staged_version"] is None
        assert worker.stop() == 0
    assert not (tmp_path / "should-never-exist").exists() and not Path("should-never-exist").exists()
