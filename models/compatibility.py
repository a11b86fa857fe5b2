"""The compatibility report of a new version against its ancestors.

- Intended task: Recall@K of the next item on the validation period, for the new version,
  its parent, and the same model trained without alignment.
- Consumer tasks: small classifiers trained once on the parent's embeddings (user activity,
  user mainstreamness, item popularity, and whether a user interacts with an item in the
  next period), evaluated (ROC-AUC) on the parent's native embeddings and on the new
  embeddings carried back by the aligner; change in percent. A task whose parent consumer is
  near chance (AUC < 0.6) is reported but left out of the mean.
- Cross-version retrieval (the empirical compatibility criterion, ECC): new user vectors
  carried back to an ancestor, against that ancestor's items, must beat the ancestor's own
  user vectors against its items.
- The compatibility matrix over every version: ``M[i][j]`` is Recall@K of version ``i``'s
  queries carried back to ``j``, against ``j``'s items. AC is the share of off-diagonal
  entries that satisfy ECC; AM the mean of the lower triangle, diagonal included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.aligners import BackwardAligner
from models.encoder import Encoder
from models.evaluation import Ranking, rank_next_items, roc_auc
from models.training import Examples

MIN_CONSUMER_AUC = 0.6

__all__ = ["MIN_CONSUMER_AUC", "VersionView", "compatibility_matrix", "consumer_changes", "embed_version"]


@dataclass
class VersionView:
    """One version's embeddings of the report's entities and validation queries."""

    version: int
    users: np.ndarray  # users at the cut, rows in ``Examples.users_at_cut`` order
    items: np.ndarray  # items at the cut
    queries: np.ndarray  # validation queries
    catalogue: np.ndarray  # every item, for retrieval

    def carried(self, chain: list[BackwardAligner]) -> VersionView:
        """The same embeddings after ``chain`` (catalogue left out: items stay native)."""
        users, items, queries = self.users, self.items, self.queries
        for aligner in chain:
            users, items, queries = aligner.apply(users), aligner.apply(items), aligner.apply(queries)
        return VersionView(self.version, users, items, queries, self.catalogue)


def embed_version(encoder: Encoder, examples: Examples) -> VersionView:
    return VersionView(
        encoder.version,
        encoder.encode_users(list(examples.users_at_cut.values())),
        encoder.encode_items(list(examples.items_at_cut.values())),
        encoder.encode_users(examples.users[examples.split :]),
        encoder.encode_items(examples.catalogue()),
    )


def cross_ranking(query_view: VersionView, gallery_view: VersionView, examples: Examples, k: int) -> Ranking:
    """The next-item ranking of ``query_view``'s queries against ``gallery_view``'s items."""
    return rank_next_items(query_view.queries, gallery_view.catalogue, examples.next_items(), k)


def cross_recall(query_view: VersionView, gallery_view: VersionView, examples: Examples, k: int) -> float:
    return cross_ranking(query_view, gallery_view, examples, k).recall


def _consumer_tasks(
    view: VersionView, examples: Examples, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task: features built from ``view`` and labels from the log (same rows every call)."""
    users = list(examples.users_at_cut)
    items = list(examples.items_at_cut)
    user_row = {u: n for n, u in enumerate(users)}
    item_row = {i: n for n, i in enumerate(items)}
    user_counts = np.array([examples.train_counts_user[u] for u in users])
    item_counts = np.array([examples.train_counts_item[i] for i in items])
    positives = sorted(
        {
            (user_row[q.user_id], item_row[t.item_id])
            for q, t in zip(examples.users[examples.split :], examples.items[examples.split :], strict=True)
            if q.user_id in user_row and t.item_id in item_row
        }
    )
    rng = np.random.default_rng(seed)
    pairs = np.array(positives + [(u, int(rng.integers(len(items)))) for u, _ in positives]).reshape(-1, 2)
    pair_labels = np.arange(len(pairs)) < len(positives)
    pair_users, pair_items = view.users[pairs[:, 0]], view.items[pairs[:, 1]]
    log_popularity = {item: math.log1p(count) for item, count in examples.train_counts_item.items()}
    mean_popularity = np.array(
        [
            sum(log_popularity.get(i, 0.0) for i in history) / max(1, len(history))
            for history in (examples.users_at_cut[u].item_ids for u in users)
        ]
    )
    return {
        "user_activity": (view.users, user_counts > np.median(user_counts)),
        "user_mainstream": (view.users, mean_popularity > np.median(mean_popularity)),
        "item_popularity": (view.items, item_counts > np.median(item_counts)),
        "next_period_interaction": (
            np.concatenate([pair_users, pair_items, pair_users * pair_items], axis=1),
            pair_labels,
        ),
    }


def _train_consumer(features: np.ndarray, labels: np.ndarray, seed: int) -> nn.Module:
    """A small MLP, as a consumer team would train on one embedding version."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(features.shape[1], 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    inputs = torch.from_numpy(features.astype(np.float32))
    targets = torch.from_numpy(labels.astype(np.float32))
    for _ in range(300):
        loss = nn.functional.binary_cross_entropy_with_logits(model(inputs).squeeze(1), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _score(model: nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(features.astype(np.float32))).squeeze(1).numpy()


def consumer_changes(
    parent: VersionView, candidate: VersionView | None, examples: Examples, seed: int
) -> dict[str, Any]:
    """Consumer AUCs on the parent's native vectors and on ``candidate`` (already carried
    into the parent's space), and the change in percent per task plus the mean."""
    tasks: dict[str, Any] = {}
    changes = []
    native_tasks = _consumer_tasks(parent, examples, seed)
    carried_tasks = _consumer_tasks(candidate, examples, seed) if candidate is not None else {}
    for offset, (name, (native, labels)) in enumerate(sorted(native_tasks.items())):
        if len(labels) < 20 or labels.all() or not labels.any():
            continue
        order = np.random.default_rng(seed + offset).permutation(len(labels))
        train, test = order[: len(order) // 2], order[len(order) // 2 :]
        if labels[test].all() or not labels[test].any():
            continue
        consumer = _train_consumer(native[train], labels[train], seed + offset)
        auc_parent = roc_auc(labels[test], _score(consumer, native[test]))
        entry: dict[str, Any] = {"auc_parent": round(auc_parent, 4), "entities": len(labels)}
        if auc_parent < MIN_CONSUMER_AUC:
            # The parent's own consumer is near chance: there is nothing to keep compatible.
            entry["skipped"] = f"parent AUC below {MIN_CONSUMER_AUC}"
            tasks[name] = entry
            continue
        if name in carried_tasks:
            carried = carried_tasks[name][0]
            auc_new = roc_auc(labels[test], _score(consumer, carried[test]))
            change = (auc_new - auc_parent) / auc_parent * 100.0
            entry.update(auc_new=round(auc_new, 4), change_pct=round(change, 3))
            changes.append(change)
        tasks[name] = entry
    summary: dict[str, Any] = {name: task.get("change_pct") for name, task in tasks.items()}
    summary["mean"] = round(float(np.mean(changes)), 3) if changes else None
    return {"change_pct": summary, "tasks": tasks}


def compatibility_matrix(
    views: dict[int, VersionView],
    chains: dict[tuple[int, int], list[BackwardAligner] | None],
    examples: Examples,
    k: int,
) -> dict[str, Any]:
    """``M[i][j]`` for every version ``i`` and every ``j <= i`` it can be carried back to."""
    versions = sorted(views)
    matrix: list[list[float | None]] = []
    for i in versions:
        row: list[float | None] = []
        for j in versions:
            chain = chains.get((i, j)) if j <= i else None
            if chain is None:
                row.append(None)
                continue
            row.append(round(cross_recall(views[i].carried(chain), views[j], examples, k), 4))
        matrix.append(row)
    diagonal = {v: matrix[n][n] for n, v in enumerate(versions)}
    pairs: list[tuple[float, float]] = [
        (matrix[a][b], diagonal[versions[b]])  # type: ignore[misc]
        for a in range(len(versions))
        for b in range(a)
        if matrix[a][b] is not None
    ]
    filled = [value for row in matrix for value in row if value is not None]
    return {
        "versions": versions,
        "recall": matrix,
        "ac": round(sum(1 for cross, base in pairs if cross > base) / len(pairs), 4) if pairs else None,
        "am": round(float(np.mean(filled)), 4) if filled else None,
    }
