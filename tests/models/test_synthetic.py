"""The synthetic worlds: drawing from cumulative weights computed once gives the very events
``Generator.choice`` would, and the real-cardinality world has the shape it claims."""

from __future__ import annotations

from collections import Counter

import numpy as np

from models.synthetic import REAL_WORLD, SyntheticWorld, _cdf, _draw


def test_drawing_from_cached_cumulative_weights_is_generator_choice() -> None:
    weights = np.random.default_rng(1).random(1_000)
    weights /= weights.sum()
    expected = np.random.default_rng(7).choice(len(weights), size=5_000, p=weights)
    assert np.array_equal(_draw(np.random.default_rng(7), _cdf(weights), 5_000), expected)


def test_the_real_world_touches_most_users_once_per_batch() -> None:
    world = SyntheticWorld(**REAL_WORLD)  # type: ignore[arg-type]
    events = world.events(5_000, start_ms=0, span_ms=1_000)
    users = Counter(event["user_id"] for event in events)
    assert len(users) > 4_000  # a worker batch of 5,000 events: most users seen once
    small = Counter(event["user_id"] for event in SyntheticWorld().events(5_000, start_ms=0, span_ms=1_000))
    assert len(small) < 2_000  # the small world: 2,000 users, each many times
    items = Counter(event["item_id"] for event in events)
    assert items.most_common(1)[0][1] > 20 * np.median(list(items.values()))  # Zipf-like popularity
