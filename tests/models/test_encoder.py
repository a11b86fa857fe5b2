"""The encoder contract: shapes, dtype, unit norm, determinism, unseen ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.encoder import EncoderConfig, TorchEncoder, TwoTowerModel
from models.features import TYPE_CODES, ItemState, UserState

CONFIG = EncoderConfig(dim=24, id_dim=8, buckets=512, hidden=16, history=10)


@pytest.fixture
def encoder() -> TorchEncoder:
    torch.manual_seed(0)
    return TorchEncoder(TwoTowerModel(CONFIG), version=1)


def _user(user_id: str, items: list[str]) -> object:
    state = UserState(window=CONFIG.history)
    for n, item in enumerate(items):
        state.add(item, TYPE_CODES["click"], None, 1_700_000_000_000 + n * 1000)
    return state.to_input(user_id)


def _item(item_id: str, clicks: int) -> object:
    state = ItemState()
    for n in range(clicks):
        state.add(TYPE_CODES["click"], 1_700_000_000_000 + n * 60_000)
    return state.to_input(item_id)


def test_outputs_are_float32_unit_vectors_of_the_configured_dim(encoder: TorchEncoder) -> None:
    users = encoder.encode_users([_user("a", ["x", "y"]), _user("b", [])])
    items = encoder.encode_items([_item("x", 3), _item("never-seen-before", 0)])
    for out in (users, items):
        assert out.dtype == np.float32 and out.shape == (2, 24)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert encoder.encode_users([]).shape == (0, 24)


def test_same_state_gives_the_same_vector_alone_or_in_a_batch(encoder: TorchEncoder) -> None:
    alone = encoder.encode_users([_user("a", ["x", "y", "z"])])
    batched = encoder.encode_users([_user("b", ["q"]), _user("a", ["x", "y", "z"])])
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-6)
    np.testing.assert_array_equal(
        encoder.encode_items([_item("x", 2)]), encoder.encode_items([_item("x", 2)])
    )


def test_state_changes_move_the_vector(encoder: TorchEncoder) -> None:
    before = encoder.encode_users([_user("a", ["x"])])[0]
    after = encoder.encode_users([_user("a", ["x", "other"])])[0]
    assert not np.allclose(before, after)
    assert not np.allclose(encoder.encode_items([_item("x", 1)]), encoder.encode_items([_item("x", 50)]))


def test_unseen_ids_embed_differently(encoder: TorchEncoder) -> None:
    vectors = encoder.encode_users([_user(f"brand-new-{n}", []) for n in range(5)])
    similarities = vectors @ vectors.T
    assert (similarities[~np.eye(5, dtype=bool)] < 0.999).all()


def test_config_round_trips_through_a_dict() -> None:
    assert EncoderConfig.from_dict({**CONFIG.to_dict(), "unknown": 1}) == CONFIG
