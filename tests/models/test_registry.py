from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.encoder import EncoderConfig, TwoTowerModel
from models.errors import IntegrityError, RegistryError, UnloadableError, VersionMissingError
from models.features import ItemState
from models.registry import EncoderRegistry

CONFIG = EncoderConfig(dim=16, id_dim=8, buckets=256, hidden=16, history=5)


class Payload:
    unpickled = False

    def __reduce__(self):
        return (_mark_unpickled, ())


def _mark_unpickled() -> None:
    Payload.unpickled = True


def test_save_load_round_trip_gives_identical_vectors(tmp_path: Path) -> None:
    registry = EncoderRegistry(tmp_path)
    assert registry.versions() == [] and registry.latest() is None
    model = TwoTowerModel(CONFIG)
    first = registry.save(model, training={"note": "x"})
    second = registry.save(model, parent=1)
    assert (first.version, second.version, second.parent) == (1, 2, 1)
    assert registry.versions() == [1, 2] and registry.manifest(1).training == {"note": "x"}
    encoder = registry.load(2)
    item = ItemState().to_input("thing")
    with torch.inference_mode():
        from models.encoder import item_batch

        expected = model.eval().encode_items(item_batch([item], CONFIG)).numpy()
    np.testing.assert_array_equal(encoder.encode_items([item]), expected)
    assert encoder.version == 2 and encoder.dim == 16


def test_a_forward_transform_is_stored_hashed_and_checked(tmp_path: Path) -> None:
    from models.aligners import fit_forward, forward_apply

    registry = EncoderRegistry(tmp_path)
    registry.save(TwoTowerModel(CONFIG))
    rng = np.random.default_rng(0)
    parent = rng.normal(size=(200, 16)).astype(np.float32)
    mixing = rng.normal(size=(16, 24)).astype(np.float32)
    forward = fit_forward(parent, parent @ mixing)
    with pytest.raises(RegistryError, match="needs a parent"):
        registry.save(TwoTowerModel(CONFIG), forward=forward)
    with pytest.raises(RegistryError, match="expected 16->16"):
        registry.save(TwoTowerModel(CONFIG), parent=1, forward=forward)  # maps 16->24
    wide = EncoderConfig(dim=24, id_dim=8, buckets=256, hidden=16, history=5)
    manifest = registry.save(TwoTowerModel(wide), parent=1, forward=forward)
    assert manifest.forward is not None and manifest.forward["method"] == "least-squares"
    loaded = registry.load_forward(2)
    assert loaded is not None and registry.load_forward(1) is None
    carried = forward_apply(loaded, parent[:5])
    expected = parent[:5] @ mixing
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(carried, expected, atol=1e-3)  # an exact linear map is recovered
    assert np.allclose(np.linalg.norm(carried, axis=1), 1.0, atol=1e-5)
    assert registry.verify(2).forward == manifest.forward
    path = tmp_path / "v2" / "forward.pt"
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(IntegrityError, match=r"forward\.pt"):
        registry.verify(2)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    registry = EncoderRegistry(tmp_path)
    registry.save(TwoTowerModel(CONFIG))
    weights = tmp_path / "v1" / "weights.pt"
    weights.write_bytes(weights.read_bytes() + b"\x00")
    with pytest.raises(IntegrityError, match="does not match"):
        registry.load(1)


def test_weights_only_loading_refuses_a_pickled_object(tmp_path: Path) -> None:
    registry = EncoderRegistry(tmp_path)
    manifest = registry.save(TwoTowerModel(CONFIG))
    weights = tmp_path / "v1" / "weights.pt"
    torch.save({"evil": Payload()}, weights)  # even with a matching hash, it must not unpickle
    import hashlib
    import json

    data = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    data["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps(data))
    assert manifest.version == 1
    # Refused as an error of the registry (what `swap stage` and workers catch), not a crash.
    with pytest.raises(UnloadableError, match="not a plain tensor file"):
        registry.load(1)
    with pytest.raises(UnloadableError):
        registry.verify(1)
    assert not Payload.unpickled


def test_missing_and_malformed_versions_are_clear_errors(tmp_path: Path) -> None:
    registry = EncoderRegistry(tmp_path)
    with pytest.raises(VersionMissingError, match="not in the registry"):
        registry.load(3)
    with pytest.raises(RegistryError):
        registry.path_of(0)
    (tmp_path / "v4").mkdir()
    (tmp_path / "v4" / "manifest.json").write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        registry.manifest(4)


def test_registry_paths_cannot_lead_outside_the_registry(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    registry = EncoderRegistry(root)
    registry.save(TwoTowerModel(CONFIG))
    # A weights file swapped for a link to a file elsewhere (even one with the right hash).
    outside = tmp_path / "elsewhere.pt"
    weights = root / "v1" / "weights.pt"
    outside.write_bytes(weights.read_bytes())
    weights.unlink()
    weights.symlink_to(outside)
    with pytest.raises(IntegrityError, match="outside the registry"):
        registry.load(1)
    # A whole version directory that is a link to another place.
    registry.save(TwoTowerModel(CONFIG))
    moved = tmp_path / "v2-moved"
    (root / "v2").rename(moved)
    (root / "v2").symlink_to(moved, target_is_directory=True)
    with pytest.raises(IntegrityError, match="outside the registry"):
        registry.manifest(2)
    with pytest.raises(RegistryError, match="plain names"):
        registry.save(TwoTowerModel(CONFIG), files={"../escape.json": b"{}"})
    assert not (root / "escape.json").exists() and not (tmp_path / "escape.json").exists()
    assert not list(root.glob(".staging-*"))
    with pytest.raises(RegistryError, match="positive integers"):
        registry.path_of(True)  # type: ignore[arg-type]


def test_two_processes_saving_the_same_version_number_leave_one_and_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers sharing a registry may both create version 1 at start; the second save must
    fail cleanly (the first version untouched, no staging left behind)."""
    registry = EncoderRegistry(tmp_path / "reg")
    first = registry.save(TwoTowerModel(CONFIG), training={"by": "first"})
    late = EncoderRegistry(tmp_path / "reg")
    monkeypatch.setattr(late, "latest", lambda: None)  # it looked before the first one saved
    with pytest.raises(RegistryError, match="created by another process"):
        late.save(TwoTowerModel(CONFIG), training={"by": "second"})
    assert registry.manifest(1).training == {"by": "first"} == first.training
    assert [p.name for p in (tmp_path / "reg").iterdir() if p.name.startswith(".staging")] == []


def test_a_version_with_item_prototypes_round_trips_with_them(tmp_path: Path) -> None:
    registry = EncoderRegistry(tmp_path)
    config = EncoderConfig(**{**CONFIG.to_dict(), "item_prototypes": True})
    registry.save(TwoTowerModel(config))
    assert registry.manifest(1).architecture == config
    loaded = registry.load(1)
    items = [ItemState().to_input(name) for name in ("a", "b", "never-seen")]
    fresh = TwoTowerModel(config).eval()
    from models.encoder import item_batch

    with torch.inference_mode():
        expected = fresh.encode_items(item_batch(items, config)).numpy()
    np.testing.assert_array_equal(loaded.encode_items(items), expected)
