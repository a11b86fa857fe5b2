"""Next-item ranking as the report measures it: seen items out, ties in expectation, NDCG."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.evaluation import NextItems, rank_next_items


def _catalogue(scores: list[float]) -> np.ndarray:
    """A one-column catalogue whose dot product with a query of 1 is ``scores``."""
    return np.asarray(scores, dtype=np.float64)[:, None]


def test_ndcg_is_the_discount_of_the_targets_position() -> None:
    query = np.ones((1, 1))
    catalogue = _catalogue([5.0, 4.0, 3.0, 2.0])
    assert rank_next_items(query, catalogue, NextItems(np.array([0])), 3).ndcg == 1.0
    second = rank_next_items(query, catalogue, NextItems(np.array([1])), 3)
    assert second.recall == 1.0 and math.isclose(second.ndcg, 1 / math.log2(3))
    fourth = rank_next_items(query, catalogue, NextItems(np.array([3])), 3)
    assert fourth.recall == 0.0 and fourth.ndcg == 0.0


def test_seen_items_leave_the_ranking_but_the_target_stays() -> None:
    query = np.ones((1, 1))
    catalogue = _catalogue([9.0, 8.0, 7.0, 1.0])
    target = np.array([2])
    assert rank_next_items(query, catalogue, NextItems(target), 1).recall == 0.0
    # the user saw rows 0 and 1: their next item is now the best of what is left
    assert rank_next_items(query, catalogue, NextItems(target, [np.array([0, 1])]), 1).recall == 1.0
    # a repeat (the target itself was seen) is still ranked, against the unseen items
    assert rank_next_items(query, catalogue, NextItems(target, [np.array([0, 1, 2])]), 1).recall == 1.0


def test_ties_count_in_expectation_not_in_catalogue_order() -> None:
    query = np.ones((1, 1))
    flat = _catalogue([1.0] * 8)
    # eight equal scores, k=2: the target is in the top 2 with probability 2/8
    for target in (0, 7):
        ranking = rank_next_items(query, flat, NextItems(np.array([target])), 2)
        assert math.isclose(ranking.recall, 0.25)
        assert math.isclose(ranking.ndcg, (1 + 1 / math.log2(3)) / 8)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 12),
    queries=st.integers(1, 30),
    items=st.integers(1, 40),
)
def test_recall_without_ties_is_the_share_of_targets_in_the_top_k(
    seed: int, k: int, queries: int, items: int
) -> None:
    rng = np.random.default_rng(seed)
    query_vectors, catalogue = rng.normal(size=(queries, 4)), rng.normal(size=(items, 4))
    targets = rng.integers(0, items, size=queries)
    top = np.argsort(-(query_vectors @ catalogue.T), axis=1)[:, :k]
    expected = float(np.mean([target in row for target, row in zip(targets, top, strict=True)]))
    assert math.isclose(rank_next_items(query_vectors, catalogue, NextItems(targets), k).recall, expected)


def test_no_queries_is_not_a_number() -> None:
    ranking = rank_next_items(np.zeros((0, 2)), np.ones((3, 2)), NextItems(np.zeros(0, dtype=np.int64)), 2)
    assert math.isnan(ranking.recall) and math.isnan(ranking.ndcg)
