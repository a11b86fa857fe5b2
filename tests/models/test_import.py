"""``embstream models import``: exported towers become a version, checked, aligned and
reported like a trained one; anything that could not be served is refused with a clear
message and nothing is written."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from models.compat_loss import BackwardCompatibilityLoss
from models.contract import InputContract
from models.encoder import EncoderConfig, TorchEncoder, TwoTowerModel
from models.errors import ImportRefusedError, IntegrityError
from models.exported import ExportedEncoder, builtin_towers, check_towers, export_towers, load_program
from models.features import MAX_ITEM_TAGS, ItemState
from models.featurize import featurize
from models.importing import EntityStates, ImportRequest, import_version
from models.registry import EncoderRegistry
from models.synthetic import SyntheticWorld
from store.vector_store import VersionedVectorStore
from stream.cli import models as models_cli
from tests.towers import GRUUserTower, MLPItemTower, PooledUserTower, export_pair, export_tower

START = 1_767_000_000_000


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    world = SyntheticWorld(seed=0)
    return sorted(world.events(4_000, start_ms=START, span_ms=3 * 86_400_000, seed=3), key=lambda e: e["ts"])


@pytest.fixture
def registry(trained_registry: Path, tmp_path: Path) -> EncoderRegistry:
    root = tmp_path / "registry"
    shutil.copytree(trained_registry, root)
    return EncoderRegistry(root)


@pytest.fixture(scope="module")
def gru_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    contract = InputContract()
    return export_pair(GRUUserTower(contract), MLPItemTower(contract), tmp_path_factory.mktemp("gru"))


def _files(registry: EncoderRegistry) -> list[str]:
    return sorted(str(path.relative_to(registry.root)) for path in registry.root.rglob("*"))


def test_an_imported_version_serves_the_towers_own_outputs_and_is_reported(
    registry: EncoderRegistry, gru_pair: tuple[Path, Path], events: list[dict[str, Any]]
) -> None:
    user_path, item_path = gru_pair
    manifest, report = import_version(registry, ImportRequest(user_path, item_path), events=events)
    assert manifest.version == 2 and manifest.parent == 1 and manifest.dim == 32
    data = json.loads((registry.path_of(2) / "manifest.json").read_text())
    assert data["architecture"] == {"kind": "torch.export", "dim": 32}
    assert data["inputs"]["history"] == 50 and data["inputs"]["hashing"]["buckets"] == 1 << 15
    assert data["towers"]["user"]["sha256"] == hashlib.sha256(user_path.read_bytes()).hexdigest()
    assert data["aligner"]["method"] == "procrustes" and data["forward"]["target_dim"] == 32
    assert set(report) >= {
        "recall",
        "ecc",
        "consumer_change_pct",
        "forward",
        "swappable",
        "compatibility_matrix",
    }
    assert (registry.path_of(2) / "report.png").stat().st_size > 0
    registry.verify(2)
    encoder = registry.load(2)
    assert isinstance(encoder, ExportedEncoder)
    # What the registry serves is the program's output on the contract's tensors.
    features = featurize(events)
    program = torch.export.load(user_path).module()
    with torch.no_grad():
        expected = program(*features.users.tensors()).numpy()
    np.testing.assert_array_equal(encoder.encode_users(features.user_inputs), expected)
    # The fitted aligner carries the new vectors into version 1's space, and back there
    # they are closer to version 1's own vectors than chance.
    carried = registry.carry(2, 1)(expected)
    own = registry.load(1).encode_users(features.user_inputs)
    assert carried.shape == own.shape
    assert np.mean(np.sum(carried * own, axis=1)) > 0.2


def test_the_entities_of_a_store_fit_the_aligner_when_no_log_is_given(
    registry: EncoderRegistry, gru_pair: tuple[Path, Path], events: list[dict[str, Any]]
) -> None:
    features = featurize(events)
    states = EntityStates(
        list(zip(features.user_ids, features.user_states, strict=True)),
        list(zip(features.item_ids, features.item_states, strict=True)),
    )
    manifest, report = import_version(
        registry, ImportRequest(*gru_pair, method="posthoc-linear"), states=states
    )
    assert manifest.training["entities"] == "store" and manifest.aligner is not None
    assert manifest.aligner["method"] == "posthoc-linear" and report["recall"]["parent"] > 0


def test_a_given_aligner_trained_with_the_loss_term_is_used_as_it_is(
    registry: EncoderRegistry, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    torch.manual_seed(1)
    contract = InputContract()
    cutoff = events[len(events) * 8 // 10]["ts"]
    features = featurize(events, at_ms=cutoff, contract=contract)
    users, items = PooledUserTower(contract), MLPItemTower(contract, dim=48)
    compat = BackwardCompatibilityLoss(registry, parent=1, dim=48, features=features)
    assert compat.versions == [1] and [p.shape for p in compat.parameters()] == [(64, 48)]
    optimizer = torch.optim.Adam([*users.parameters(), *items.parameters(), *compat.parameters()], lr=1e-2)
    first = last = 0.0
    for step in range(60):
        rows = torch.randint(0, len(features.user_ids), (128,))
        item_rows = torch.randint(0, len(features.item_ids), (128,))
        user_vectors = users(*(t[rows] for t in features.users.tensors()))
        item_vectors = items(*(t[item_rows] for t in features.items.tensors()))
        loss = compat(user_vectors, item_vectors, user_rows=rows, item_rows=item_rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first, last = (loss.item(), loss.item()) if step == 0 else (first, loss.item())
    assert last < first / 2  # the towers and the aligner learn to land in version 1's space
    aligner_path = tmp_path / "backward.pt"
    torch.save(compat.aligner.state_dict(), aligner_path)
    user_path, item_path = export_pair(users, items, tmp_path / "pooled", contract)
    manifest, _ = import_version(
        registry, ImportRequest(user_path, item_path, aligner=aligner_path), events=events
    )
    assert manifest.aligner is not None and manifest.aligner["method"] == "given" and manifest.dim == 48
    loaded = registry.load_aligner(manifest.version)
    assert loaded is not None and torch.equal(loaded.linear.weight, compat.aligner.linear.weight)


class _NaNItems(nn.Module):
    def forward(self, item_buckets: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return features[:, :4] * float("nan")


class _Noisy(MLPItemTower):
    def forward(self, item_buckets: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        vectors = super().forward(item_buckets, features)
        return vectors + torch.rand_like(vectors)


def _refused(
    registry: EncoderRegistry, request: ImportRequest, events: list[dict[str, Any]], match: str
) -> None:
    before = _files(registry)
    with pytest.raises(ImportRefusedError, match=match):
        import_version(registry, request, events=events)
    assert _files(registry) == before and registry.versions() == [1]


def test_refusals_name_what_is_wrong_and_write_nothing(
    registry: EncoderRegistry, gru_pair: tuple[Path, Path], events: list[dict[str, Any]], tmp_path: Path
) -> None:
    contract = InputContract()
    user_path, item_path = gru_pair
    pickled = tmp_path / "pickled.pt2"
    torch.save(MLPItemTower(contract), pickled)
    _refused(registry, ImportRequest(user_path, pickled), events, "pickled torch.save file")
    state_dict = tmp_path / "weights.pt"
    torch.save(MLPItemTower(contract).state_dict(), state_dict)
    _refused(
        registry, ImportRequest(user_path, state_dict), events, "pickled torch.save file|not a torch.export"
    )
    fixed = export_tower(GRUUserTower(contract), "user", tmp_path / "fixed.pt2", dynamic=False)
    _refused(registry, ImportRequest(fixed, item_path), events, "only takes batches of 2")
    nan = export_tower(_NaNItems(), "item", tmp_path / "nan.pt2")
    _refused(registry, ImportRequest(user_path, nan), events, "NaN or infinite")
    wide = export_tower(MLPItemTower(contract, dim=48), "item", tmp_path / "wide.pt2")
    _refused(
        registry,
        ImportRequest(user_path, wide),
        events,
        "user tower returns 32 dimensions and the item tower 48",
    )
    noisy = export_tower(_Noisy(contract), "item", tmp_path / "noisy.pt2")
    _refused(registry, ImportRequest(user_path, noisy), events, "not deterministic")
    _refused(registry, ImportRequest(item_path, user_path), events, "takes 2 tensors; the contract gives 4")
    short = InputContract(history=20)
    _refused(registry, ImportRequest(user_path, item_path, contract=short), events, "history of 50 entries")
    bad_aligner = tmp_path / "aligner.pt"
    torch.save(torch.zeros(32, 32), bad_aligner)
    _refused(registry, ImportRequest(user_path, item_path, aligner=bad_aligner), events, r"needs \[64, 32\]")


def test_a_tower_changed_after_import_fails_verify_and_does_not_load(
    registry: EncoderRegistry, gru_pair: tuple[Path, Path], events: list[dict[str, Any]]
) -> None:
    import_version(registry, ImportRequest(*gru_pair), events=events)
    tower = registry.path_of(2) / "item_tower.pt2"
    other = registry.path_of(2) / "user_tower.pt2"
    tower.write_bytes(other.read_bytes())  # a valid program, but not the one imported
    with pytest.raises(IntegrityError, match=r"item_tower\.pt2 sha256"):
        registry.load(2)
    verify = subprocess.run(
        [sys.executable, "-m", "stream.cli", "models", "verify", "2", "--registry", str(registry.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        verify.returncode == 1 and "version 2 FAILED" in verify.stderr and "item_tower.pt2" in verify.stderr
    )


def test_the_command_imports_and_prints_the_train_summary(
    registry: EncoderRegistry, gru_pair: tuple[Path, Path], events: list[dict[str, Any]], tmp_path: Path
) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(event) + "\n" for event in events))
    command = [sys.executable, "-m", "stream.cli", "models", "import", "--registry", str(registry.root)]
    user_path, item_path = gru_pair
    done = subprocess.run(
        [*command, "--user-tower", str(user_path), "--item-tower", str(item_path), "--events", str(log)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["version"] == 2 and summary["parent"] == 1 and summary["method"] == "procrustes"
    assert set(summary) == {
        "version",
        "parent",
        "method",
        "recall",
        "baselines",
        "intended_change_pct",
        "consumer_change_pct",
        "ecc",
        "forward",
        "swappable",
        "report",
    }
    assert set(summary["baselines"]) == {"popularity", "mf"}
    verify = subprocess.run(
        [sys.executable, "-m", "stream.cli", "models", "verify", "2", "--registry", str(registry.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0 and "towers" in verify.stdout
    refused = subprocess.run(
        [
            *command,
            "--user-tower",
            str(tmp_path / "missing.pt2"),
            "--item-tower",
            str(item_path),
            "--events",
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "no user tower at" in refused.stderr
    assert registry.versions() == [1, 2]


def test_the_built_in_model_exported_and_imported_gives_the_same_vectors(
    registry: EncoderRegistry, events: list[dict[str, Any]]
) -> None:
    trained = registry.load(1)
    assert isinstance(trained, TorchEncoder)
    user_tower, item_tower = export_towers(*builtin_towers(trained.model), trained.inputs)
    version = registry.save_imported(
        user_tower, item_tower, dim=64, contract=trained.inputs, parent=1
    ).version
    imported = registry.load(version)
    features = featurize(events)
    np.testing.assert_array_equal(
        imported.encode_users(features.user_inputs), trained.encode_users(features.user_inputs)
    )
    np.testing.assert_array_equal(
        imported.encode_items(features.item_inputs), trained.encode_items(features.item_inputs)
    )
    assert registry.manifest(version).inputs == registry.manifest(1).inputs


def test_the_command_fits_on_a_sample_of_the_store_when_no_log_is_given(
    registry: EncoderRegistry,
    gru_pair: tuple[Path, Path],
    events: list[dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    features = featurize(events)
    store = VersionedVectorStore(tmp_path / "data")
    writer = store.writer()
    for kind, ids, states in (
        ("user", features.user_ids, features.user_states),
        ("item", features.item_ids, features.item_states),
    ):
        for entity_id, state in zip(ids, states, strict=True):
            writer.put_state(kind, entity_id, state)
    writer.commit()
    store.close()
    sample = models_cli.STORE_SAMPLE
    monkeypatch.setattr(models_cli, "STORE_SAMPLE", 500)
    states = models_cli._store_states(tmp_path / "data", 50)
    for sampled, every in ((states.users, features.user_ids), (states.items, features.item_ids)):
        assert 250 < len(sampled) <= 500 < len(every)  # evenly spread: every k-th key
    assert states.users[0][0] == min(features.user_ids)  # spread from the first key on
    monkeypatch.setattr(models_cli, "STORE_SAMPLE", sample)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "models",
            "import",
            "--registry",
            str(registry.root),
            "--user-tower",
            str(gru_pair[0]),
            "--item-tower",
            str(gru_pair[1]),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"{len(features.user_ids):,} users and {len(features.item_ids):,} items from the store" in done.stderr
    )
    assert json.loads(done.stdout)["version"] == 2
    assert registry.manifest(2).training["entities"] == "store"


def test_towers_that_read_item_tags_import_under_a_contract_that_declares_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = EncoderConfig(dim=8, id_dim=4, buckets=256, hidden=8, history=5, item_tags=True)
    model = TwoTowerModel(config).eval()
    user_tower, item_tower = export_towers(*builtin_towers(model), config.inputs)
    programs = load_program(user_tower, "user"), load_program(item_tower, "item")
    assert check_towers(*programs, config.inputs) == 8
    untagged = InputContract(history=5, buckets=256)
    with pytest.raises(ImportRefusedError, match="takes 3 tensors; the contract gives 2"):
        check_towers(*programs, untagged)
    fewer = InputContract(history=5, buckets=256, item_tags=3)
    with pytest.raises(ImportRefusedError, match="reads 8 tag slots; the input contract says 3"):
        check_towers(*programs, fewer)
    registry = EncoderRegistry(tmp_path / "registry")
    version = registry.save_imported(user_tower, item_tower, dim=8, contract=config.inputs).version
    imported = registry.load(version)
    assert registry.manifest(version).inputs.item_tags == MAX_ITEM_TAGS
    items = []
    for name, tags in (("a", ["Drama"]), ("b", []), ("c", ["Drama", "Crime"])):
        state = ItemState()
        state.set_tags(tags)
        items.append(state.to_input(name))
    np.testing.assert_array_equal(imported.encode_items(items), TorchEncoder(model, 1).encode_items(items))
