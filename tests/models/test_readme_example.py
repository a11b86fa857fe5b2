"""The README's "Bring your own encoder" example runs as written: the training script in
plain PyTorch on ``featurize_pairs`` with the BC-Aligner loss term, then the import command,
in a directory holding an interaction log and a registry with version 1."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from models.registry import EncoderRegistry
from models.synthetic import SyntheticWorld

ROOT = Path(__file__).resolve().parents[2]


def _block(marker: str, language: str) -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- example: {re.escape(marker)} -->\n```{language}\n(.*?)```", readme, re.S)
    assert found, f"README has no {language} block after the marker {marker!r}"
    return found.group(1)


def test_the_bring_your_own_encoder_example_trains_exports_and_imports(
    trained_registry: Path, tmp_path: Path
) -> None:
    shutil.copytree(trained_registry, tmp_path / "embstream-registry")
    world = SyntheticWorld(seed=0)
    events = world.events(30_000, start_ms=1_767_000_000_000, span_ms=7 * 86_400_000, seed=1)
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    (tmp_path / "example.py").write_text(_block("bring-your-own-encoder", "python"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    trained = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert {"user_tower.pt2", "item_tower.pt2", "backward.pt"} <= {p.name for p in tmp_path.iterdir()}

    shell = _block("bring-your-own-encoder-import", "sh").replace("\\\n", " ")
    command = shlex.split(shell.splitlines()[0], comments=True)
    assert command[:3] == ["embstream", "models", "import"]
    imported = subprocess.run(
        [sys.executable, "-m", "stream.cli", *command[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    summary = json.loads(imported.stdout)
    assert summary["version"] == 2 and summary["parent"] == 1 and summary["method"] == "given"
    assert summary["recall"]["new"] > 0.05  # learned: chance is about 0.006 on this log
    manifest = EncoderRegistry(tmp_path / "embstream-registry").manifest(2)
    assert manifest.kind == "torch.export" and manifest.dim == 64 and manifest.aligner is not None
