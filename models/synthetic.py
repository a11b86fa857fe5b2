"""Synthetic interaction events with planted structure, for the demo and for tests.

Items belong to clusters and have a Zipf popularity within their cluster; each user prefers
one or two clusters and picks from them most of the time. An encoder that learns anything
should therefore put a user near the items of the user's clusters.

The default world is small (2,000 users, 5,000 items): a batch of events touches each user
many times. :data:`REAL_WORLD` has the cardinality of real traffic (1,000,000 users, 100,000
items, Zipf-like activity), where most users of a batch are seen once.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from models.features import EVENT_TYPES

__all__ = ["REAL_WORLD", "WORLDS", "SyntheticWorld"]

_TYPE_PROBABILITIES = np.array([0.6, 0.24, 0.08, 0.05, 0.03])


@dataclass
class SyntheticWorld:
    """A fixed population of users and items from which events are drawn."""

    users: int = 2_000
    items: int = 5_000
    clusters: int = 20
    loyalty: float = 0.85
    seed: int = 0
    #: Zipf exponents: of user activity, and of item popularity within a cluster.
    user_exponent: float = 0.6
    item_exponent: float = 1.1

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.item_cluster = rng.integers(0, self.clusters, size=self.items)
        self.cluster_items = [np.flatnonzero(self.item_cluster == c) for c in range(self.clusters)]
        self.cluster_weights = []
        for members in self.cluster_items:
            weights = 1.0 / np.arange(1, len(members) + 1) ** self.item_exponent
            self.cluster_weights.append(weights / weights.sum())
        self.user_clusters = rng.integers(0, self.clusters, size=(self.users, 2))
        activity = 1.0 / np.arange(1, self.users + 1) ** self.user_exponent
        self.user_activity = rng.permutation(activity / activity.sum())
        # Cumulative weights, computed once: ``Generator.choice(n, p=p)`` draws
        # ``cdf.searchsorted(random(), "right")`` after the same normalisation, so sampling
        # from these gives the very same events, without an O(n) pass per call.
        self._user_cdf = _cdf(self.user_activity)
        self._cluster_cdfs = [_cdf(weights) for weights in self.cluster_weights]

    def events(
        self, count: int, start_ms: int, span_ms: int, seed: int | None = None
    ) -> list[dict[str, object]]:
        """``count`` events with timestamps spread evenly over ``[start_ms, start_ms+span_ms)``."""
        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        users = _draw(rng, self._user_cdf, count)
        loyal = rng.random(count) < self.loyalty
        which = rng.integers(0, 2, size=count)
        clusters = np.where(
            loyal, self.user_clusters[users, which], rng.integers(0, self.clusters, size=count)
        )
        types = rng.choice(len(EVENT_TYPES), size=count, p=_TYPE_PROBABILITIES)
        ratings = rng.integers(1, 6, size=count)
        stamps = start_ms + (np.arange(count) * span_ms) // max(count, 1)
        items = rng.integers(0, self.items, size=count)
        for cluster, members in enumerate(self.cluster_items):
            chosen = clusters == cluster
            if len(members) and chosen.any():
                picks = _draw(rng, self._cluster_cdfs[cluster], int(chosen.sum()))
                items[chosen] = members[picks]
        events: list[dict[str, object]] = []
        for index in range(count):
            event: dict[str, object] = {
                "user_id": f"u{users[index]}",
                "item_id": f"i{items[index]}",
                "type": EVENT_TYPES[types[index]],
                "ts": int(stamps[index]),
            }
            if types[index] == len(EVENT_TYPES) - 1:
                event["value"] = int(ratings[index])
            events.append(event)
        return events

    def drifted(self, fraction: float, seed: int) -> SyntheticWorld:
        """The same world after a ``fraction`` of users moved one preferred cluster."""
        rng = np.random.default_rng(seed)
        moved = copy.deepcopy(self)  # the cumulative weights stay valid: only tastes move
        movers = rng.random(self.users) < fraction
        moved.user_clusters[movers, rng.integers(0, 2, size=int(movers.sum()))] = rng.integers(
            0, self.clusters, size=int(movers.sum())
        )
        return moved

    def drifting_log(
        self, periods: int, events_per_period: int, drift: float, start_ms: int, period_ms: int
    ) -> list[dict[str, object]]:
        """``periods`` consecutive periods of events; users' tastes drift between periods."""
        world: SyntheticWorld = self
        events: list[dict[str, object]] = []
        for period in range(periods):
            events += world.events(
                events_per_period, start_ms + period * period_ms, period_ms, seed=self.seed * 7919 + period
            )
            world = world.drifted(drift, seed=self.seed * 104_729 + period)
        return events

    def stream(self, seed: int, chunk: int = 1_000) -> Iterator[dict[str, object]]:
        """An endless stream of events (timestamps left to the caller)."""
        round_ = 0
        while True:
            yield from self.events(chunk, 0, 1, seed=seed * 1_000_003 + round_)
            round_ += 1


#: Real traffic's cardinality (the benchmarks' "real" world): most users of a batch are new to
#: it. ``SyntheticWorld(**REAL_WORLD)``.
REAL_WORLD: dict[str, float | int] = {
    "users": 1_000_000,
    "items": 100_000,
    "user_exponent": 0.8,
    "item_exponent": 1.0,
}


#: The benchmarks' worlds by name: ``SyntheticWorld(**WORLDS[name])``.
WORLDS: dict[str, dict[str, float | int]] = {"small": {}, "real": REAL_WORLD}


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.asarray(weights, dtype=np.float64).cumsum()
    cdf /= cdf[-1]
    return cdf


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """``rng.choice(len(cdf), size=size, p=weights)`` for the weights of ``cdf``: the same
    numbers drawn the same way."""
    return cdf.searchsorted(rng.random(size), side="right")
