"""The encoder contract: shapes, dtype, unit norm, determinism, unseen ids."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.encoder import EncoderConfig, TorchEncoder, TwoTowerModel, fixed_prototypes, item_batch
from models.features import MAX_ITEM_TAGS, TYPE_CODES, ItemInput, ItemState, UserState

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


def test_fixed_prototypes_are_the_same_on_every_call_and_unit_length() -> None:
    first, second = fixed_prototypes(512, 24), fixed_prototypes(512, 24)
    assert torch.equal(first, second) and first.shape == (512, 24)
    np.testing.assert_allclose(first.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    # nearly orthogonal directions, not one repeated vector
    assert (first[:64] @ first[:64].T - torch.eye(64)).abs().max() < 0.9


def test_item_prototypes_put_an_item_at_the_same_place_in_every_model() -> None:
    config = replace(CONFIG, item_prototypes=True)
    torch.manual_seed(0)
    first = TorchEncoder(TwoTowerModel(config), version=1)
    torch.manual_seed(1)
    second = TorchEncoder(TwoTowerModel(config), version=2)
    items = [_item("x", 3), _item("y", 0), _item("never-seen-before", 9)]
    np.testing.assert_array_equal(first.encode_items(items), second.encode_items(items))
    # the item's id decides, not its counts; different ids, different places
    np.testing.assert_array_equal(first.encode_items([_item("x", 1)]), first.encode_items([_item("x", 50)]))
    assert not np.allclose(first.encode_items([_item("x", 1)]), first.encode_items([_item("y", 1)]))
    # users are still learned: two initialisations place them differently
    users = [_user("a", ["x", "y"])]
    assert not np.allclose(first.encode_users(users), second.encode_users(users))


def _tagged(item_id: str, tags: list[str]) -> ItemInput:
    state = ItemState()
    state.set_tags(tags)
    return state.to_input(item_id)


def test_a_tag_reading_item_tower_places_items_by_their_tags() -> None:
    config = replace(CONFIG, item_tags=True)
    assert config.inputs.item_tags == MAX_ITEM_TAGS
    assert [spec.name for spec in config.inputs.item_tensors] == ["item_buckets", "features", "tag_buckets"]
    torch.manual_seed(0)
    encoder = TorchEncoder(TwoTowerModel(config), version=1)
    drama, comedy, none = encoder.encode_items(
        [_tagged("new", ["Drama"]), _tagged("new", ["Comedy"]), _tagged("new", [])]
    )
    assert not np.allclose(drama, comedy) and not np.allclose(drama, none)
    # tag order does not matter (a mean), and the tags of an item are padded, not truncated
    a, b = encoder.encode_items([_tagged("x", ["Drama", "Crime"]), _tagged("x", ["Crime", "Drama"])])
    np.testing.assert_allclose(a, b, atol=1e-6)
    # a tower that does not read tags ignores them, and builds no tag tensor
    plain = TorchEncoder(TwoTowerModel(CONFIG), version=2)
    np.testing.assert_array_equal(
        plain.encode_items([_tagged("x", ["Drama"])]), plain.encode_items([_tagged("x", [])])
    )
    assert item_batch([_tagged("x", ["Drama"])], CONFIG).tag_buckets is None
    buckets = item_batch([_tagged("x", ["Drama", "Crime"]), _tagged("y", [])], config).tag_buckets
    assert buckets is not None and buckets.shape == (2, MAX_ITEM_TAGS)
    assert (buckets[0, :2] > 0).all() and (buckets[0, 2:] == 0).all() and (buckets[1] == 0).all()
    assert int(buckets.max()) < CONFIG.buckets
