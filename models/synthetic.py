"""Synthetic interaction events with planted structure, for the demo and for tests.

Items belong to clusters and have a Zipf popularity within their cluster; each user prefers
one or two clusters and picks from them most of the time. An encoder that learns anything
should therefore put a user near the items of the user's clusters.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from models.features import EVENT_TYPES

__all__ = ["SyntheticWorld"]

_TYPE_PROBABILITIES = np.array([0.6, 0.24, 0.08, 0.05, 0.03])


@dataclass
class SyntheticWorld:
    """A fixed population of users and items from which events are drawn."""

    users: int = 2_000
    items: int = 5_000
    clusters: int = 20
    loyalty: float = 0.85
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.item_cluster = rng.integers(0, self.clusters, size=self.items)
        self.cluster_items = [np.flatnonzero(self.item_cluster == c) for c in range(self.clusters)]
        self.cluster_weights = []
        for members in self.cluster_items:
            weights = 1.0 / np.arange(1, len(members) + 1) ** 1.1
            self.cluster_weights.append(weights / weights.sum())
        self.user_clusters = rng.integers(0, self.clusters, size=(self.users, 2))
        activity = 1.0 / np.arange(1, self.users + 1) ** 0.6
        self.user_activity = rng.permutation(activity / activity.sum())

    def events(
        self, count: int, start_ms: int, span_ms: int, seed: int | None = None
    ) -> list[dict[str, object]]:
        """``count`` events with timestamps spread evenly over ``[start_ms, start_ms+span_ms)``."""
        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        users = rng.choice(self.users, size=count, p=self.user_activity)
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
                picks = rng.choice(len(members), size=int(chosen.sum()), p=self.cluster_weights[cluster])
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
        moved = copy.deepcopy(self)
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
