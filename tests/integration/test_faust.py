"""embstream inside a faust app, on the real broker and RocksDB: the README's app, run as a
faust worker, refreshes and serves embeddings on faust's web port, sends malformed events to
the dead letter topic, and is swapped to a new version by ``embstream swap`` (its ``kill -9``
is in tests/faults/test_faust_crash.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stream.client import Client
from stream.kafka.broker import EmbeddedBroker
from tests.conftest import http_json, produce, read_topic, wait_until
from tests.faults.streams import expected_counts, send_sentinels, stored_counts, wait_users
from tests.faust_app import FaustWorker

pytestmark = pytest.mark.integration


def _event(user: str, item: str) -> dict[str, object]:
    return {"user_id": user, "item_id": item, "type": "click", "ts": int(time.time() * 1000)}


def test_the_readme_app_refreshes_serves_and_dead_letters(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    topic = "faust-interactions"
    with FaustWorker(
        tmp_path / "data", trained_registry, broker.bootstrap, topic, app_id="faustserve"
    ).start() as app:
        good = [_event(f"u{n % 30}", f"i{(n * 7) % 40}") for n in range(600)]
        produce(broker.bootstrap, topic, [*good[:300], b"{not json", b'{"user_id": "u1"}', *good[300:]])
        wait_users(app, send_sentinels(broker.bootstrap, topic, 1))
        status, answer = http_json("POST", f"{app.api}/v1/embeddings/user/batch", {"ids": ["u3", "ghost"]})
        assert status == 200 and answer["version"] == 1 and answer["results"][1] is None
        with Client(app.api) as client:
            batch = client.get_many("user", ["u3", "ghost"])
            top = client.recommend("u3", k=3)
        assert batch.missing == ["ghost"]
        assert np.array_equal(batch.vectors[0], np.asarray(answer["results"][0]["vector"], dtype=np.float32))
        assert len(top.items) == 3 and top.version == 1
        dead = read_topic(broker.bootstrap, f"{topic}.dlq")
        assert sorted(record.value for record in dead) == sorted([b"{not json", b'{"user_id": "u1"}'])
        assert app.metric("embstream_events_applied_total") == 600 + 4  # and the 4 sentinels
        health = http_json("GET", f"{app.api}/healthz")[1]
        assert health["assigned_partitions"] == [0, 1, 2, 3]
        assert app.stop() == 0, app.log()
    log = app.log()  # faust's consumer joined only once the encoder was loaded
    assert log.index("embstream: serving version 1") < log.index("Setting newly assigned partitions")
    expected = expected_counts(good)
    assert stored_counts(tmp_path / "data", sorted(expected)) == dict(expected)


def test_embstream_swap_stages_and_promotes_a_faust_hosted_refresher(
    broker: EmbeddedBroker, swap_registry: Path, tmp_path: Path
) -> None:
    topic = "faust-swap-interactions"
    registry = tmp_path / "registry"
    shutil.copytree(swap_registry, registry)
    with FaustWorker(
        tmp_path / "data",
        registry,
        broker.bootstrap,
        topic,
        app_id="faustswap",
        env={"EMBSTREAM_ENCODER_VERSION": "1"},
    ).start() as app:
        produce(broker.bootstrap, topic, [_event(f"u{n}", f"i{n % 20}") for n in range(200)])
        wait_users(app, send_sentinels(broker.bootstrap, topic, 1))

        def swap(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "stream.cli", "swap", *args, "--broker", broker.bootstrap]
            command += ["--registry", str(registry), "--control-topic", f"{topic}.control"]
            return subprocess.run(command, capture_output=True, text=True, timeout=120)

        staged = swap("stage", "2")  # no event flows meanwhile: the control plane runs anyway
        assert staged.returncode == 0, staged.stderr + app.log()
        wait_until(lambda: json.loads(swap("status").stdout)["backfill_complete"] is True, timeout_s=60)
        promoted = swap("promote")
        assert promoted.returncode == 0, promoted.stderr
        wait_until(
            lambda: http_json("GET", f"{app.api}/v1/versions")[1]["serving_version"] == 2, timeout_s=30
        )
        status, body = http_json("GET", f"{app.api}/v1/embeddings/user/u5")
        assert status == 200 and body["version"] == 2
        status, pinned = http_json("GET", f"{app.api}/v1/embeddings/user/u5?version=1")
        assert status == 200 and pinned["version"] == 1
        assert app.stop() == 0, app.log()
