"""The report's baselines: popularity and matrix factorisation, on the report's own split."""

from __future__ import annotations

from collections import Counter

import numpy as np

from models.baselines import BASELINES, baseline_views, popularity
from models.evaluation import rank_next_items
from models.synthetic import SyntheticWorld
from models.training import TrainingConfig, build_examples


def _events() -> list[dict]:
    world = SyntheticWorld(users=200, items=300, clusters=5, seed=0)
    return world.events(6_000, start_ms=1_700_000_000_000, span_ms=86_400_000)


def _examples():
    return build_examples(_events(), history=10, validation_fraction=0.2)


def test_popularity_ranks_items_by_their_training_period_count() -> None:
    examples = _examples()
    baseline = popularity(examples)
    catalogue = examples.catalogue()
    events = _events()
    counts = Counter(event["item_id"] for event in events[: int(len(events) * 0.8)])
    best = catalogue[int(np.argmax(baseline.catalogue[:, 0]))].item_id
    assert counts[best] == max(counts.values())
    assert len(baseline.queries) == len(examples.users) - examples.split
    # the same ranking for every query: every query row is the same
    assert np.all(baseline.queries == baseline.queries[0])


def test_matrix_factorisation_learns_the_planted_tastes() -> None:
    examples = _examples()
    views = baseline_views(examples, 16, TrainingConfig(epochs=5, batch_size=256, seed=1))
    assert set(views) == set(BASELINES)
    truth = examples.next_items()
    scores = {name: rank_next_items(v.queries, v.catalogue, truth, 10) for name, v in views.items()}
    # 300 items: a random top 10 finds the next item 3 % of the time (less the seen ones)
    assert scores["mf"].recall > 4 * 10 / 300, scores
    untrained = baseline_views(examples, 16, TrainingConfig(epochs=0, seed=1))["mf"]
    assert scores["mf"].recall > 2 * rank_next_items(untrained.queries, untrained.catalogue, truth, 10).recall
    trained = {item.item_id for item in examples.items[: examples.split]}
    known = np.array([item.item_id in trained for item in examples.catalogue()])
    assert np.allclose(np.linalg.norm(views["mf"].catalogue[known], axis=1), 1.0, atol=1e-4)
    if (~known).any():  # no vector to learn from: every unseen item gets the mean one
        assert np.all(views["mf"].catalogue[~known] == views["mf"].catalogue[~known][0])
