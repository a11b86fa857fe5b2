"""Measures shared by training and the compatibility report."""

from __future__ import annotations

import numpy as np

__all__ = ["recall_at_k", "roc_auc"]


def recall_at_k(queries: np.ndarray, catalogue: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of queries whose target row of ``catalogue`` is among the ``k`` best scores."""
    if len(queries) == 0:
        return float("nan")
    k = min(k, len(catalogue))
    hits = 0
    for start in range(0, len(queries), 4096):
        scores = queries[start : start + 4096] @ catalogue.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        hits += int((top == targets[start : start + 4096, None]).any(axis=1).sum())
    return hits / len(queries)


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
