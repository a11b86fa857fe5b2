"""Versions across restarts on the real broker and RocksDB: the per-id cap of K versions.
(The kill -9 scenario is in ``tests/faults``.)"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from models.registry import EncoderRegistry
from stream.kafka.broker import EmbeddedBroker
from tests.conftest import WorkerProcess, http_json, produce, wait_until

pytestmark = pytest.mark.integration


def test_records_keep_the_k_most_recent_versions(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    registry_dir = tmp_path / "registry"
    shutil.copytree(trained_registry, registry_dir)
    registry = EncoderRegistry(registry_dir)
    model = registry.load(1).model
    registry.save(model, parent=1)
    registry.save(model, parent=2)
    topic = "k-cap-interactions"
    data = tmp_path / "data"
    for version in (1, 2, 3):
        with WorkerProcess(
            data,
            registry_dir,
            broker.bootstrap,
            topic,
            ["--encoder-version", str(version), "--versions-kept", "2"],
        ).start() as worker:
            produce(
                broker.bootstrap,
                topic,
                [
                    {
                        "user_id": "kim",
                        "item_id": f"v{version}",
                        "type": "click",
                        "ts": int(time.time() * 1000),
                    }
                ],
            )
            wait_until(
                lambda w=worker, v=version: (
                    http_json("GET", f"{w.api}/v1/embeddings/user/kim?version={v}")[0] == 200
                ),
                timeout_s=30,
            )
            if version == 3:
                status, body = http_json("GET", f"{worker.api}/v1/embeddings/user/kim?version=1")
                # not held any more, and v3 has no aligner to carry its vector back: unreachable
                assert status == 409 and body["error"] == "version_unreachable"
                # held, but older than kim's serving entry (version 2 is no longer written): it is
                # never served stale, and v3 cannot carry its fresh vector back either
                status, body = http_json("GET", f"{worker.api}/v1/embeddings/user/kim?version=2")
                assert status == 409 and body["error"] == "version_unreachable"
                status, body = http_json("GET", f"{worker.api}/v1/embeddings/user/kim")
                assert status == 200 and body["version"] == 3
                _, versions = http_json("GET", f"{worker.api}/v1/versions")
                assert versions["store"]["user"] == {"2": 1, "3": 1}
                assert versions["registry_versions"] == [1, 2, 3]
            assert worker.stop() == 0
