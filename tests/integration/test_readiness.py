"""Readiness on the real broker and RocksDB: a first start on an empty registry trains
version 1 while ``/healthz`` says it is alive and ``/readyz`` says it is not ready; the worker
joins its group only once it can apply events."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.kafka.broker import EmbeddedBroker
from tests.conftest import WorkerProcess, http_json, produce, wait_until

pytestmark = pytest.mark.integration


def test_a_first_start_is_ready_only_once_it_can_apply_events(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = "readiness-interactions"
    worker = WorkerProcess(tmp_path / "data", tmp_path / "empty-registry", broker.bootstrap, topic)
    # (readyz status, its reason, healthz status, assigned partitions) every 0.1 s
    samples: list[tuple[int, str, int, list[int]]] = []

    def ready() -> bool:
        try:
            status, body = http_json("GET", f"{worker.api}/readyz")
            alive, health = http_json("GET", f"{worker.api}/healthz")
        except OSError:  # not listening yet
            return False
        samples.append((status, body["reason"], alive, health["assigned_partitions"]))
        return status == 200

    with worker.start(wait=False):
        wait_until(ready, timeout_s=120, interval_s=0.1)
        event = {"user_id": "first", "item_id": "i1", "type": "click", "ts": int(time.time() * 1000)}
        produce(broker.bootstrap, topic, [event])
        applied = wait_until(
            lambda: http_json("GET", f"{worker.api}/v1/embeddings/user/first")[0] == 200, timeout_s=30
        )
        assert applied
        assert worker.stop() == 0, worker.log()
    assert "created version 1" in worker.log()
    training = [sample for sample in samples if sample[1] == "starting: loading the serving encoder"]
    assert len(training) >= 10, samples  # seconds of training, sampled every 0.1 s
    assert all(alive == 200 for _, _, alive, _ in samples)  # alive all along: a liveness probe passes
    assert all(status == 503 for status, *_ in samples[:-1]) and samples[-1][0] == 200
    # No partition before the worker could apply events: the group is joined after the load.
    assert all(partitions == [] for *_, partitions in training)
    assert samples[-1][3] != []
