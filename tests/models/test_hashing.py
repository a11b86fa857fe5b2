"""The batch form of the id hash gives every id's single hash, in order."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from models.hashing import id_hash64, id_hashes64


@given(st.lists(st.text(max_size=40), max_size=30), st.sampled_from(["user", "item"]))
def test_batch_hashes_equal_single_hashes(ids: list[str], salt: str) -> None:
    hashes = id_hashes64(salt, ids)
    assert hashes.dtype == np.uint64 and hashes.shape == (len(ids),)
    assert hashes.tolist() == [id_hash64(salt, entity_id) for entity_id in ids]


def test_salts_give_different_hashes() -> None:
    assert id_hashes64("user", ["a"])[0] != id_hashes64("item", ["a"])[0]
