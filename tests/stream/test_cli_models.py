"""``embstream train`` and ``embstream models`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.synthetic import SyntheticWorld


def _embstream(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "events.jsonl"
    world = SyntheticWorld(users=150, items=200, clusters=4, seed=3)
    events = world.events(3_000, start_ms=1_700_000_000_000, span_ms=86_400_000)
    path.write_text("".join(json.dumps(event) + "\n" for event in events) + "garbage line\n")
    return path


def test_train_then_manage_versions(events_file: Path, tmp_path: Path) -> None:
    registry = str(tmp_path / "registry")

    def train(*options: str) -> subprocess.CompletedProcess[str]:
        return _embstream(
            "train", "--events", str(events_file), "--registry", registry, "--epochs", "1", *options
        )

    first = train()
    summary = json.loads(first.stdout)
    assert summary["version"] == 1 and summary["parent"] is None and summary["swappable"] is True
    assert "skipped 1 unusable rows" in first.stderr and "validation recall" in first.stderr
    second = json.loads(train("--dim", "48", "--method", "procrustes").stdout)
    assert second["version"] == 2 and second["parent"] == 1 and second["method"] == "procrustes"
    assert set(second["ecc"]) == {"1"} and "mean" in second["consumer_change_pct"]
    assert Path(second["report"]).is_file()

    listing = _embstream("models", "list", "--registry", registry).stdout.splitlines()
    assert listing[0].split()[:3] == ["version", "parent", "dim"]
    assert listing[2].split()[:5] == ["2", "1", "48", "trained", "procrustes"]
    shown = json.loads(_embstream("models", "show", "2", "--registry", registry).stdout)
    assert shown["manifest"]["aligner"]["target_dim"] == 64 and "compatibility_matrix" in shown["report"]
    # the forward transform (version 1's space into version 2's) is stored, hashed and reported
    forward = shown["manifest"]["forward"]
    assert (forward["source_dim"], forward["target_dim"]) == (64, 48) and len(forward["sha256"]) == 64
    assert set(shown["report"]["forward"]["recall"]) == {
        "new_new",
        "parent_parent",
        "new_vs_forward_parent_items",
        "forward_parent_users_vs_new",
    }
    assert isinstance(second["forward"]["ecc"], bool)
    verified = _embstream("models", "verify", "2", "--registry", registry).stdout
    assert "OK" in verified and "forward transform" in verified
    forward_file = tmp_path / "registry" / "v2" / "forward.pt"
    data = forward_file.read_bytes()
    forward_file.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    failed = _embstream("models", "verify", "2", "--registry", registry, check=False)
    assert failed.returncode == 1 and "forward.pt sha256" in failed.stderr
    forward_file.write_bytes(data)
    third = json.loads(
        train(
            "--no-forward",
            "--cross-task-weight",
            "0",
            "--logq-weight",
            "1.5",
            "--user-id-dropout",
            "0.25",
            "--no-item-tags",
        ).stdout
    )
    assert third["version"] == 3 and third["forward"] is None and third["method"] == "bc-aligner"
    assert set(third["baselines"]) == {"popularity", "mf"}
    manifest = json.loads(_embstream("models", "show", "3", "--registry", registry).stdout)["manifest"]
    assert manifest["training"]["cross_task_weight"] == 0.0 and manifest["training"]["logq_weight"] == 1.5
    assert manifest["architecture"]["user_id_dropout"] == 0.25 and not manifest["architecture"]["item_tags"]
    assert not (tmp_path / "registry" / "v3" / "forward.pt").exists()
    _embstream("models", "delete", "3", "--registry", registry)

    aligner = tmp_path / "registry" / "v2" / "backward.pt"
    data = aligner.read_bytes()
    aligner.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    failed = _embstream("models", "verify", "2", "--registry", registry, check=False)
    assert failed.returncode == 1 and "backward.pt sha256" in failed.stderr

    refused = _embstream("models", "delete", "1", "--registry", registry, check=False)
    assert refused.returncode == 2 and "descend from version 1" in refused.stderr
    _embstream("models", "delete", "2", "--registry", registry)
    assert not (tmp_path / "registry" / "v2").exists()


def test_train_reads_a_ratings_csv(tmp_path: Path) -> None:
    world = SyntheticWorld(users=100, items=150, clusters=4, seed=4)
    rows = ["userId,movieId,rating,timestamp"]
    for n, event in enumerate(world.events(2_500, start_ms=0, span_ms=1)):
        rows.append(
            f"{str(event['user_id'])[1:]},{str(event['item_id'])[1:]},{1 + n % 5},{1_600_000_000 + n}"
        )
    path = tmp_path / "ratings.csv"
    path.write_text("\n".join(rows) + "\n")
    result = _embstream("train", "--events", str(path), "--registry", str(tmp_path / "r"), "--epochs", "1")
    assert json.loads(result.stdout)["version"] == 1


def test_train_errors_are_one_line(tmp_path: Path) -> None:
    result = _embstream(
        "train", "--events", str(tmp_path / "nope.jsonl"), "--registry", str(tmp_path), check=False
    )
    assert result.returncode == 2 and result.stderr.strip().startswith(
        "embstream: error: no such events file"
    )
    unknown = _embstream("models", "show", "9", "--registry", str(tmp_path), check=False)
    assert unknown.returncode == 2 and "not in the registry" in unknown.stderr
