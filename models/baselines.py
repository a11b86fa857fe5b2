"""Baselines every compatibility report ranks next to the encoder, on the same split.

- ``popularity``: every user gets the items most interacted with in the training period
  (less the ones they have seen). A model that does not beat it has not learned a taste.
- ``mf``: matrix factorisation at the encoder's dimension, one free vector per user id and
  per item id, trained on the training period's (user, next item) pairs with the encoder's
  own loss (in-batch sampled softmax with logQ correction). A user or item the training
  period never saw gets the mean vector: factorisation has no features to embed it with.

Each baseline is a pair of matrices, queries and catalogue, ranked like the encoder's
vectors (:func:`models.evaluation.rank_next_items`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from models.training import Examples, TrainingConfig

__all__ = ["BASELINES", "Baseline", "baseline_views", "matrix_factorisation", "popularity"]

BASELINES = ("popularity", "mf")


@dataclass(frozen=True)
class Baseline:
    """Query rows (the validation queries) and catalogue rows (``Examples.catalogue()``)."""

    queries: np.ndarray
    catalogue: np.ndarray


def popularity(examples: Examples) -> Baseline:
    """One score per item, its training-period interaction count, the same for every query."""
    counts = [examples.train_counts_item[item.item_id] for item in examples.catalogue()]
    queries = np.ones((len(examples.users) - examples.split, 1), dtype=np.float32)
    return Baseline(queries, np.asarray(counts, dtype=np.float32)[:, None])


def matrix_factorisation(examples: Examples, dim: int, training: TrainingConfig) -> Baseline:
    """Id vectors trained with in-batch softmax and logQ correction on the training period."""
    split = examples.split
    user_ids = sorted({user.user_id for user in examples.users[:split]})
    item_ids = sorted({item.item_id for item in examples.items[:split]})
    user_row = {user: row for row, user in enumerate(user_ids)}
    item_row = {item: row for row, item in enumerate(item_ids)}
    users = torch.tensor([user_row[u.user_id] for u in examples.users[:split]])
    items = torch.tensor([item_row[i.item_id] for i in examples.items[:split]])
    counts = torch.bincount(items, minlength=len(item_ids)).double()
    log_q = training.logq_weight * torch.log(counts / split).float()[items]
    generator = torch.Generator().manual_seed(training.seed)
    user_table = torch.nn.Parameter(torch.randn(len(user_ids), dim, generator=generator) * 0.1)
    item_table = torch.nn.Parameter(torch.randn(len(item_ids), dim, generator=generator) * 0.1)
    optimizer = torch.optim.Adam([user_table, item_table], lr=training.learning_rate)
    for _ in range(training.epochs):
        order = torch.randperm(split, generator=generator)
        for start in range(0, split, training.batch_size):
            rows = order[start : start + training.batch_size]
            query = functional.normalize(user_table[users[rows]], dim=1)
            positive = functional.normalize(item_table[items[rows]], dim=1)
            logits = query @ positive.T / training.temperature - log_q[rows].unsqueeze(0)
            loss = functional.cross_entropy(logits, torch.arange(len(rows)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        user_vectors = functional.normalize(user_table, dim=1).numpy()
        item_vectors = functional.normalize(item_table, dim=1).numpy()
    mean_user, mean_item = user_vectors.mean(axis=0), item_vectors.mean(axis=0)
    queries = (
        np.stack(
            [
                user_vectors[user_row[q.user_id]] if q.user_id in user_row else mean_user
                for q in examples.users[split:]
            ]
        )
        if len(examples.users) > split
        else np.zeros((0, dim), dtype=np.float32)
    )
    catalogue = np.stack(
        [
            item_vectors[item_row[i.item_id]] if i.item_id in item_row else mean_item
            for i in examples.catalogue()
        ]
    )
    return Baseline(queries.astype(np.float32), catalogue.astype(np.float32))


def baseline_views(examples: Examples, dim: int, training: TrainingConfig) -> dict[str, Baseline]:
    """Every baseline of :data:`BASELINES`, by name."""
    return {"popularity": popularity(examples), "mf": matrix_factorisation(examples, dim, training)}
