from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.aligners import fit_least_squares, fit_procrustes
from models.encoder import EncoderConfig, TwoTowerModel
from models.errors import IncompatibleVersionsError, RegistryError
from models.registry import EncoderRegistry

TINY = dict(id_dim=4, buckets=64, hidden=8)


def test_least_squares_recovers_a_linear_map_between_different_dims() -> None:
    rng = np.random.default_rng(0)
    true_map = rng.standard_normal((12, 8))
    source = rng.standard_normal((500, 12))
    aligner = fit_least_squares(source, source @ true_map)
    np.testing.assert_allclose(aligner.linear.weight.detach().numpy(), true_map.T, atol=1e-4)


def test_procrustes_finds_the_rotation_and_keeps_distances() -> None:
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    source = rng.standard_normal((300, 10))
    aligner = fit_procrustes(source, source @ rotation + 0.01 * rng.standard_normal((300, 10)))
    weight = aligner.linear.weight.detach().numpy()
    np.testing.assert_allclose(weight @ weight.T, np.eye(10), atol=1e-5)
    np.testing.assert_allclose(weight, rotation.T, atol=0.01)


def test_chains_compose_back_to_any_ancestor_and_stop_where_an_aligner_is_missing(tmp_path: Path) -> None:
    registry = EncoderRegistry(tmp_path)
    rng = np.random.default_rng(2)
    registry.save(TwoTowerModel(EncoderConfig(dim=8, **TINY)))
    dims = {1: 8, 2: 12, 3: 16}
    maps = {}
    for version in (2, 3):
        maps[version] = rng.standard_normal((dims[version], dims[version - 1]))
        source = rng.standard_normal((100, dims[version]))
        registry.save(
            TwoTowerModel(EncoderConfig(dim=dims[version], **TINY)),
            parent=version - 1,
            aligner=fit_least_squares(source, source @ maps[version]),
            aligner_method="posthoc-linear",
        )
    vectors = rng.standard_normal((5, 16)).astype(np.float32)
    carried = vectors
    for aligner in registry.aligner_chain(3, 1):
        carried = aligner.apply(carried)
    np.testing.assert_allclose(carried, vectors @ maps[3] @ maps[2], rtol=1e-3, atol=1e-3)
    assert registry.aligner_chain(3, 3) == []
    assert registry.lineage(3) == [3, 2, 1]
    registry.save(TwoTowerModel(EncoderConfig(dim=16, **TINY)), parent=3)  # method none
    with pytest.raises(IncompatibleVersionsError, match="has no backward aligner"):
        registry.aligner_chain(4, 1)
    registry.save(TwoTowerModel(EncoderConfig(dim=8, **TINY)))  # a second root
    with pytest.raises(IncompatibleVersionsError, match="not an ancestor"):
        registry.aligner_chain(5, 1)


def test_delete_refuses_to_cut_a_chain_unless_forced(tmp_path: Path) -> None:
    registry = EncoderRegistry(tmp_path)
    registry.save(TwoTowerModel(EncoderConfig(dim=8, **TINY)))
    registry.save(TwoTowerModel(EncoderConfig(dim=8, **TINY)), parent=1)
    with pytest.raises(RegistryError, match="descend from version 1"):
        registry.delete(1)
    registry.delete(2)
    registry.delete(1)
    assert registry.versions() == []


def test_an_aligner_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    registry = EncoderRegistry(tmp_path)
    registry.save(TwoTowerModel(EncoderConfig(dim=8, **TINY)))
    source = np.random.default_rng(3).standard_normal((50, 6))
    with pytest.raises(RegistryError, match="expected 8->8"):
        registry.save(
            TwoTowerModel(EncoderConfig(dim=8, **TINY)),
            parent=1,
            aligner=fit_least_squares(source, source),
            aligner_method="posthoc-linear",
        )
