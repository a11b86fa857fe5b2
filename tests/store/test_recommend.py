"""Recommendations above a real store and real item indexes: one version per answer, seen
items left out, and clear errors while an index is missing or being built."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models.features import UserState
from store.errors import IndexBuildingError, IndexMissingError, InvalidArgumentError
from store.item_indexes import ItemIndexes
from store.recommend import recommend_many
from store.vector_store import VersionedVectorStore
from tests.conftest import wait_until

DIM = 4


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VersionedVectorStore]:
    opened = VersionedVectorStore(tmp_path / "db")
    writer = opened.writer()
    items = [f"i{n}" for n in range(8)]
    for version, sign in ((1, 1.0), (2, -1.0)):  # version 2 points every item the other way
        vectors = np.zeros((8, DIM), np.float32)
        vectors[:, 0] = sign * np.linspace(1.0, 0.3, 8)
        vectors[:, 1] = np.sqrt(1 - vectors[:, 0] ** 2)
        writer.put_vectors("item", items, version, vectors, 1)
        writer.put_vectors("user", ["u1"], version, np.array([[sign, 0, 0, 0]], np.float32), 1)
    seen = UserState()
    seen.add("i0", 1, None, 1)
    writer.put_state("user", "u1", seen.to_bytes())
    writer.commit()
    opened.set_serving_version(2)
    yield opened
    opened.close()


def test_each_version_is_answered_from_its_own_index(store: VersionedVectorStore) -> None:
    indexes = ItemIndexes(store, dim_of=lambda version: DIM)
    indexes.track(serving=2)
    indexes.start()
    try:
        wait_until(lambda: indexes.index(1) is not None and indexes.index(2) is not None)
        version, (at_serving,) = recommend_many(store, indexes, ["u1"], k=3)
        assert version == 2 and at_serving is not None
        assert at_serving.items.ids == ["i1", "i2", "i3"]  # i0 was seen; scores of version 2
        assert at_serving.excluded == 1
        _, (old,) = recommend_many(store, indexes, ["u1"], k=3, version=1, exclude_seen=False)
        assert old is not None and old.version == 1 and old.items.ids == ["i0", "i1", "i2"]
        assert old.items.scores[0] == pytest.approx(1.0)
        _, (nobody,) = recommend_many(store, indexes, ["nobody"], k=3)
        assert nobody is None
    finally:
        indexes.stop()


def test_a_missing_or_building_index_is_a_clear_error(store: VersionedVectorStore) -> None:
    indexes = ItemIndexes(store, dim_of=lambda version: DIM, keep=1)
    indexes.track(serving=2)  # not started: the index stays "building"
    # The API answers these 503 index_building, 404 no_index and 400 bad_k
    # (tests/stream/test_api_errors.py).
    with pytest.raises(IndexBuildingError, match="being built"):
        recommend_many(store, indexes, ["u1"], k=3)
    with pytest.raises(IndexMissingError, match="has no item index"):
        recommend_many(store, indexes, ["u1"], k=3, version=1)
    with pytest.raises(InvalidArgumentError) as bad:
        recommend_many(store, indexes, ["u1"], k=0)
    assert bad.value.argument == "k"
