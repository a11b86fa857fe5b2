"""Imported versions served live on the real broker and RocksDB: two tower pairs of other
architectures and dimensions (a GRU over the history at 32 dimensions, a pooled model at
48), imported with ``embstream models import``, staged, promoted and rolled back while the
worker serves, with every vector equal to the towers' own output on the contract's inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.contract import InputContract
from models.featurize import featurize
from models.synthetic import SyntheticWorld
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.producer import send_records
from tests.conftest import WorkerProcess, http_json, wait_until
from tests.integration.test_swap import _backfilled, _quiet, _serving, _swap
from tests.towers import GRUUserTower, MLPItemTower, PooledUserTower, export_pair

pytestmark = pytest.mark.integration

USERS = [f"u{n}" for n in range(120)]
ITEMS = [f"i{n}" for n in range(60)]


def _import(registry: Path, towers: tuple[Path, Path], log: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "models",
            "import",
            "--user-tower",
            str(towers[0]),
            "--item-tower",
            str(towers[1]),
            "--events",
            str(log),
            "--registry",
            str(registry),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def imported(trained_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 trained here; v2 a GRU pair (32 dimensions, procrustes into v1); v3 a pooled pair
    (48 dimensions, least squares into v2)."""
    base = tmp_path_factory.mktemp("import-live")
    registry = base / "registry"
    shutil.copytree(trained_registry, registry)
    events = SyntheticWorld(seed=0).events(4_000, start_ms=1_767_000_000_000, span_ms=86_400_000, seed=9)
    log = base / "events.jsonl"
    log.write_text("".join(json.dumps(event) + "\n" for event in events))
    torch.manual_seed(0)
    contract = InputContract()
    gru = export_pair(GRUUserTower(contract), MLPItemTower(contract), base / "gru")
    pooled = export_pair(PooledUserTower(contract), MLPItemTower(contract, dim=48), base / "pooled")
    assert _import(registry, gru, log, "--parent", "1")["version"] == 2
    assert _import(registry, pooled, log, "--parent", "2", "--method", "posthoc-linear")["version"] == 3
    return {"registry": registry, 2: gru, 3: pooled}


class Producer:
    """Events for the test's users and items, each at its own time, kept for featurising."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.sent: list[dict[str, Any]] = []
        self.clock = int(time.time() * 1000) - 60_000

    def send(self, rounds: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        records = []
        for _ in range(rounds):
            for user in USERS:
                self.clock += 1
                event = {
                    "user_id": user,
                    "item_id": ITEMS[int(rng.integers(len(ITEMS)))],
                    "type": ["view", "click", "rating"][int(rng.integers(3))],
                    "ts": self.clock,
                }
                if event["type"] == "rating":
                    event["value"] = float(rng.integers(1, 6))
                self.sent.append(event)
                records.append((user.encode(), json.dumps(event).encode()))
        send_records([self.worker.broker], self.worker.topic, records)


def _vectors(worker: WorkerProcess, kind: str, ids: list[str], version: int) -> tuple[np.ndarray, set[str]]:
    status, body = http_json(
        "POST", f"{worker.api}/v1/embeddings/{kind}/batch", {"ids": ids, "version": version}
    )
    assert status == 200, body
    assert all(result is not None and result["version"] == version for result in body["results"]), body
    return np.array([r["vector"] for r in body["results"]], dtype=np.float32), {
        r["source"] for r in body["results"]
    }


def _assert_towers_served(
    worker: WorkerProcess, producer: Producer, towers: tuple[Path, Path], version: int
) -> None:
    """Every served vector of ``version`` is the exported towers' output on what
    ``featurize`` builds from the events sent."""
    features = featurize(producer.sent, users=USERS, items=ITEMS)
    with torch.no_grad():
        users = torch.export.load(towers[0]).module()(*features.users.tensors()).numpy()
        items = torch.export.load(towers[1]).module()(*features.items.tensors()).numpy()
    served_users, sources = _vectors(worker, "user", USERS, version)
    assert sources == {"native"}
    np.testing.assert_allclose(served_users, users, atol=2e-5)
    served_items, sources = _vectors(worker, "item", ITEMS, version)
    assert sources == {"native"}
    np.testing.assert_allclose(served_items, items, atol=2e-5)


def _stage_and_promote(worker: WorkerProcess, version: int) -> None:
    staged = _swap(worker, "stage", str(version), "--force")  # untrained towers fail the gate
    assert staged.returncode == 0, staged.stderr
    wait_until(lambda: _backfilled(worker, version), timeout_s=90)
    wait_until(lambda: json.loads(_swap(worker, "status").stdout)["promotable"], timeout_s=60)
    promoted = _swap(worker, "promote")
    assert promoted.returncode == 0, promoted.stderr
    wait_until(lambda: _serving(worker) == version, timeout_s=30)


def test_imported_versions_are_staged_promoted_and_rolled_back_live(
    broker: EmbeddedBroker, imported: dict[str, Any], tmp_path: Path
) -> None:
    worker = WorkerProcess(
        tmp_path / "data", imported["registry"], broker.bootstrap, "import-live", ["--encoder-version", "1"]
    ).start()
    try:
        producer = Producer(worker)
        producer.send(rounds=3, seed=0)
        wait_until(
            lambda: http_json("GET", f"{worker.api}/v1/embeddings/user/{USERS[-1]}")[0] == 200, timeout_s=30
        )
        _stage_and_promote(worker, 2)
        producer.send(rounds=2, seed=1)  # refreshed live by the imported towers
        _quiet(worker)
        _assert_towers_served(worker, producer, imported[2], 2)
        v1, _ = _vectors(worker, "user", USERS[:5], 1)
        assert v1.shape == (5, 64)  # consumers of version 1 still read it

        _stage_and_promote(worker, 3)
        producer.send(rounds=1, seed=2)
        _quiet(worker)
        _assert_towers_served(worker, producer, imported[3], 3)
        status, body = http_json("GET", f"{worker.api}/v1/recommendations/{USERS[0]}?k=5")
        assert status == 200 and body["version"] == 3 and len(body["items"]) == 5
        # version 1 is two imported aligners away (48 -> 32 -> 64); it is still served
        status, old = http_json("GET", f"{worker.api}/v1/embeddings/user/{USERS[7]}?version=1")
        assert status == 200 and len(old["vector"]) == 64

        rolled = _swap(worker, "rollback")
        assert rolled.returncode == 0, rolled.stderr
        wait_until(lambda: _serving(worker) == 2, timeout_s=30)
        producer.send(rounds=1, seed=3)
        _quiet(worker)
        _assert_towers_served(worker, producer, imported[2], 2)  # version 2 was kept fresh
    finally:
        worker.stop()
