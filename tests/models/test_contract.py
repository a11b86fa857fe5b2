"""One contract, run against every encoder configuration and every aligner kind:
shapes, dtype, determinism, save/load round trip, and refusal of pickled payloads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models.aligners import BackwardAligner, fit_least_squares, fit_procrustes
from models.encoder import EncoderConfig, TwoTowerModel
from models.errors import UnloadableError
from models.features import TYPE_CODES, ItemState, UserState
from models.registry import EncoderRegistry

ENCODERS = {
    "default": EncoderConfig(),
    "small": EncoderConfig(dim=16, id_dim=8, buckets=256, hidden=16, history=5),
    "wide": EncoderConfig(dim=96, id_dim=24, buckets=1024, hidden=48, history=20),
}


def _pairs(source_dim: int, target_dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    source = rng.standard_normal((200, source_dim)).astype(np.float32)
    return source, source @ rng.standard_normal((source_dim, target_dim)).astype(np.float32)


ALIGNERS: dict[str, Callable[[], BackwardAligner]] = {
    "initial": lambda: BackwardAligner(24, 16),
    "least-squares": lambda: fit_least_squares(*_pairs(24, 16)),
    "procrustes": lambda: fit_procrustes(*_pairs(16, 16)),
    "growing": lambda: fit_least_squares(*_pairs(16, 24)),
}


class Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


def _inputs(config: EncoderConfig) -> tuple[list, list]:
    users, items = [], []
    for n in range(6):
        state = UserState(window=config.history)
        for m in range(n):
            state.add(f"item-{m}", TYPE_CODES["click"], None, 1_700_000_000_000 + m * 1000)
        users.append(state.to_input(f"user-{n}"))
        item = ItemState()
        for m in range(n):
            item.add(TYPE_CODES["view"], 1_700_000_000_000 + m * 1000)
        items.append(item.to_input(f"item-{n}"))
    return users, items


def _smuggle(path: Path, manifest: Path, key: str) -> None:
    torch.save({"payload": Payload()}, path)
    data = json.loads(manifest.read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if key == "weights":
        data["weights_sha256"] = digest
    else:
        data["aligner"]["sha256"] = digest
    manifest.write_text(json.dumps(data))


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_contract(name: str, tmp_path: Path) -> None:
    config = ENCODERS[name]
    torch.manual_seed(0)
    model = TwoTowerModel(config)
    registry = EncoderRegistry(tmp_path)
    manifest = registry.save(model)
    encoder = registry.load(manifest.version)
    users, items = _inputs(config)
    for encode, inputs in ((encoder.encode_users, users), (encoder.encode_items, items)):
        first, second = encode(inputs), encode(inputs)
        assert first.shape == (len(inputs), config.dim) and first.dtype == np.float32
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    with torch.inference_mode():
        from models.encoder import user_batch

        native = model.eval().encode_users(user_batch(users, config)).numpy()
    np.testing.assert_array_equal(encoder.encode_users(users), native)
    _smuggle(tmp_path / "v1" / "weights.pt", tmp_path / "v1" / "manifest.json", "weights")
    with pytest.raises(UnloadableError, match="pickled objects"):
        registry.load(1)


@pytest.mark.parametrize("name", sorted(ALIGNERS))
def test_aligner_contract(name: str, tmp_path: Path) -> None:
    aligner = ALIGNERS[name]()
    vectors = np.random.default_rng(1).standard_normal((7, aligner.source_dim)).astype(np.float32)
    carried = aligner.apply(vectors)
    assert carried.shape == (7, aligner.target_dim) and carried.dtype == np.float32
    np.testing.assert_array_equal(carried, aligner.apply(vectors))
    with torch.no_grad():
        np.testing.assert_allclose(aligner(torch.from_numpy(vectors)).numpy(), carried, rtol=1e-5, atol=1e-6)
    registry = EncoderRegistry(tmp_path)
    parent = registry.save(
        TwoTowerModel(EncoderConfig(dim=aligner.target_dim, id_dim=4, buckets=64, hidden=8))
    )
    child = registry.save(
        TwoTowerModel(EncoderConfig(dim=aligner.source_dim, id_dim=4, buckets=64, hidden=8)),
        parent=parent.version,
        aligner=aligner,
        aligner_method=name,
    )
    loaded = registry.load_aligner(child.version)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.apply(vectors), carried)
    assert [a.source_dim for a in registry.aligner_chain(child.version, parent.version)] == [
        aligner.source_dim
    ]
    _smuggle(tmp_path / "v2" / "backward.pt", tmp_path / "v2" / "manifest.json", "aligner")
    with pytest.raises(UnloadableError, match="pickled objects"):
        registry.load_aligner(child.version)
