"""Who may do what, on a running worker: the API token and signed control messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from stream.kafka.broker import EmbeddedBroker
from stream.kafka.producer import send_records
from stream.rollout.messages import ControlCodec, control_message
from tests.conftest import WorkerProcess, http_json, wait_until

pytestmark = pytest.mark.integration

TOKEN = "live-token"
KEY = "live-control-key"


def _cli(worker: WorkerProcess, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "EMBSTREAM_BROKER": worker.broker,
            "EMBSTREAM_REGISTRY": str(worker.registry),
            **env,
        },
    )


def test_a_secured_worker_answers_only_with_the_token_and_obeys_only_signed_commands(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    topic = "secured-interactions"
    secrets = {"EMBSTREAM_API_TOKEN": TOKEN, "EMBSTREAM_CONTROL_KEY": KEY}
    with WorkerProcess(
        tmp_path / "data", trained_registry, broker.bootstrap, topic, env=secrets
    ).start() as worker:
        event = {"user_id": "sec-user", "item_id": "sec-item", "type": "click", "ts": 1_767_000_000_000}
        send_records([broker.bootstrap], topic, [(b"sec-user", orjson.dumps(event))])
        url = f"{worker.api}/v1/embeddings/user/sec-user"
        wait_until(lambda: http_json("GET", url, token=TOKEN)[0] == 200, timeout_s=30)
        status, body = http_json("GET", url)
        assert status == 401 and body["error"] == "unauthorized"
        assert http_json("GET", f"{worker.api}/healthz")[0] == 200
        looked_up = _cli(
            worker,
            {"EMBSTREAM_API_URL": worker.api, "EMBSTREAM_API_TOKEN": TOKEN},
            "lookup",
            "user",
            "sec-user",
        )
        assert looked_up.returncode == 0 and '"version": 1' in looked_up.stdout
        refused = _cli(worker, {"EMBSTREAM_API_URL": worker.api}, "lookup", "user", "sec-user")
        assert refused.returncode == 1 and "401" in refused.stderr

        # Forged and unsigned commands on the control topic are ignored and counted.
        control = f"{topic}.control"
        producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
        forged = ControlCodec("not-the-key").encode(control_message("stage", version=1, rate=None))
        unsigned = orjson.dumps(control_message("rollback", **{"from": 1, "to": 0}))
        for raw in (forged, unsigned):
            producer.send(control, raw, partition=0)
        producer.flush()
        producer.close()
        wait_until(lambda: worker.metric("embstream_control_rejected_total") >= 2, timeout_s=30)
        assert worker.metric('embstream_control_rejected_total{reason="forged"}') == 1
        assert worker.metric('embstream_control_rejected_total{reason="unsigned"}') == 1
        _, versions = http_json("GET", f"{worker.api}/v1/versions", token=TOKEN)
        assert versions["serving_version"] == 1 and versions["rollout"]["staged_version"] is None

        # The swap command without the key is refused before it sends anything; with the
        # key it reads the topic and reports what was ignored (signed commands being
        # applied: tests/integration/test_swap.py).
        swap_env = {"EMBSTREAM_CONTROL_TOPIC": control}
        unkeyed = _cli(worker, swap_env, "swap", "cancel")
        assert unkeyed.returncode == 2 and "EMBSTREAM_CONTROL_KEY" in unkeyed.stderr
        status = _cli(worker, {**swap_env, "EMBSTREAM_CONTROL_KEY": KEY}, "swap", "status")
        assert status.returncode == 0
        assert orjson.loads(status.stdout)["ignored_messages"] == {"forged": 1, "unsigned": 1}
        assert worker.stop() == 0
