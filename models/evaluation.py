"""Measures shared by training, the compatibility report and its baselines.

Next-item ranking is measured as the recommendation API serves it: the items a user has
already interacted with (the history window of their state) are not candidates. Ties are
broken at random in expectation, so a ranking with many equal scores (popularity) is neither
flattered nor penalised by the order of the catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["NextItems", "Ranking", "rank_next_items", "roc_auc"]

_CHUNK = 2048


@dataclass(frozen=True)
class NextItems:
    """Per validation query: the catalogue row of the item that came next, and the rows the
    query's user has already seen (left out of its ranking)."""

    targets: np.ndarray
    seen: Sequence[np.ndarray] = ()

    def subset(self, rows: np.ndarray) -> NextItems:
        """The queries at ``rows`` only (rank their ``queries[rows]`` against it)."""
        return NextItems(self.targets[rows], [self.seen[row] for row in rows.tolist()])

    def within(self, items: np.ndarray) -> NextItems:
        """The same queries against the catalogue rows ``items`` only (rank them against
        ``catalogue[items]``); every target must be one of them."""
        position = np.full(int(max(items.max(initial=-1), self.targets.max(initial=-1))) + 1, -1)
        position[items] = np.arange(len(items))
        targets = position[self.targets]
        if (targets < 0).any():
            raise ValueError("a query's next item is not among the chosen items")
        seen = [position[rows[rows < len(position)]] for rows in self.seen]
        return NextItems(targets, [rows[rows >= 0] for rows in seen])


@dataclass(frozen=True)
class Ranking:
    """Recall@k and NDCG@k of the next item (one relevant item per query)."""

    recall: float
    ndcg: float


def rank_next_items(queries: np.ndarray, catalogue: np.ndarray, truth: NextItems, k: int) -> Ranking:
    """How high each query's next item scores (``queries @ catalogue.T``) among the catalogue
    rows it has not seen; NaN without queries."""
    if len(queries) == 0:
        return Ranking(float("nan"), float("nan"))
    k = min(k, len(catalogue))
    # discount[j]: the summed gain of positions 0..j-1, so a tie spanning positions a..b
    # earns (discount[b + 1] - discount[a]) / (b - a + 1) in expectation.
    discount = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    recall = ndcg = 0.0
    for start in range(0, len(queries), _CHUNK):
        stop = min(start + _CHUNK, len(queries))
        scores = queries[start:stop] @ catalogue.T
        targets = truth.targets[start:stop]
        for row, seen in enumerate(truth.seen[start:stop]):
            scores[row, seen[seen != targets[row]]] = -np.inf
        target_scores = scores[np.arange(stop - start), targets][:, None]
        above = (scores > target_scores).sum(axis=1)
        tied = (scores == target_scores).sum(axis=1)  # the target itself included
        recall += float(np.clip((k - above) / tied, 0.0, 1.0).sum())
        first, last = np.minimum(above, k), np.minimum(above + tied, k)
        ndcg += float(((discount[last] - discount[first]) / tied).sum())
    return Ranking(recall / len(queries), ndcg / len(queries))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties share ranks); NaN with a single class."""
    labels = labels.astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))
