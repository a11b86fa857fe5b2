"""Training a two-tower encoder version from an interaction log.

Examples are built by replaying the log in time order through the same entity state the
stream keeps (:mod:`models.features`): for each interaction, the user's state just before it
is the query and the item's state just before it is the positive. Loss: in-batch sampled
softmax. Validation: the last ``validation_fraction`` of the log (train on the past,
evaluate on the next period), Recall@K of the next item among every item seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

from models.encoder import EncoderConfig, TwoTowerModel, item_batch, user_batch
from models.errors import TrainingError
from models.features import TYPE_CODES, ItemInput, ItemState, UserInput, UserState

__all__ = ["TrainingConfig", "TrainingResult", "build_examples", "train_two_tower"]


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 3
    batch_size: int = 512
    learning_rate: float = 3e-3
    temperature: float = 0.07
    validation_fraction: float = 0.1
    recall_k: int = 10
    seed: int = 0


@dataclass
class TrainingResult:
    model: TwoTowerModel
    metrics: dict[str, Any]


@dataclass
class Examples:
    users: list[UserInput]
    items: list[ItemInput]
    final_items: dict[str, ItemInput]


def build_examples(events: Sequence[dict[str, Any]], history: int) -> Examples:
    """Replay ``events`` (sorted by ``ts``) through user and item state."""
    user_states: dict[str, UserState] = {}
    item_states: dict[str, ItemState] = {}
    users: list[UserInput] = []
    items: list[ItemInput] = []
    for event in events:
        user_id, item_id = str(event["user_id"]), str(event["item_id"])
        code, ts = TYPE_CODES[str(event["type"])], int(event["ts"])
        user = user_states.setdefault(user_id, UserState(window=history))
        item = item_states.setdefault(item_id, ItemState())
        if user.item_ids:
            users.append(user.to_input(user_id))
            items.append(item.to_input(item_id))
        value = event.get("value")
        user.add(item_id, code, None if value is None else float(value), ts)
        item.add(code, ts)
    final = {item_id: state.to_input(item_id) for item_id, state in item_states.items()}
    return Examples(users, items, final)


def _recall_at_k(
    model: TwoTowerModel, examples: Examples, start: int, config: EncoderConfig, k: int
) -> float:
    queries = examples.users[start:]
    if not queries:
        return math.nan
    catalogue = list(examples.final_items.values())
    index = {item.item_id: row for row, item in enumerate(catalogue)}
    with torch.inference_mode():
        item_vectors = model.encode_items(item_batch(catalogue, config))
        hits = 0
        for offset in range(0, len(queries), 2048):
            chunk = queries[offset : offset + 2048]
            user_vectors = model.encode_users(user_batch(chunk, config))
            top = (user_vectors @ item_vectors.T).topk(min(k, len(catalogue)), dim=1).indices
            targets = torch.tensor(
                [index[item.item_id] for item in examples.items[start + offset : start + offset + len(chunk)]]
            )
            hits += int((top == targets.unsqueeze(1)).any(dim=1).sum())
    return hits / len(queries)


def train_two_tower(
    events: Sequence[dict[str, Any]],
    config: EncoderConfig,
    training: TrainingConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainingResult:
    """Train a fresh model; ``progress(step, steps, loss)`` is called after every step."""
    examples = build_examples(sorted(events, key=lambda e: int(e["ts"])), config.history)
    total = len(examples.users)
    split = int(total * (1.0 - training.validation_fraction))
    if split < training.batch_size // 4 or split < 2:
        raise TrainingError(f"only {total} training examples; need a longer interaction log")
    torch.manual_seed(training.seed)
    generator = torch.Generator().manual_seed(training.seed)
    model = TwoTowerModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    user_tensors = user_batch(examples.users[:split], config)
    item_tensors = item_batch(examples.items[:split], config)
    # logQ correction: in-batch negatives are drawn by popularity, so without it the model
    # learns to push popular items down (Yi et al., RecSys 2019).
    frequency: dict[str, int] = {}
    for item in examples.items[:split]:
        frequency[item.item_id] = frequency.get(item.item_id, 0) + 1
    log_q = torch.tensor([math.log(frequency[item.item_id] / split) for item in examples.items[:split]])
    steps_per_epoch = math.ceil(split / training.batch_size)
    steps = steps_per_epoch * training.epochs
    step, loss_value = 0, math.nan
    model.train()
    for _ in range(training.epochs):
        order = torch.randperm(split, generator=generator)
        for start in range(0, split, training.batch_size):
            rows = order[start : start + training.batch_size]
            users = model.encode_users(_take(user_tensors, rows))
            items = model.encode_items(_take(item_tensors, rows))
            logits = users @ items.T / training.temperature - log_q[rows].unsqueeze(0)
            loss = functional.cross_entropy(logits, torch.arange(len(rows)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = loss.item()
            if progress is not None:
                progress(step, steps, loss_value)
    model.eval()
    recall = _recall_at_k(model, examples, split, config, training.recall_k)
    metrics = {
        "examples": total,
        "train_examples": split,
        "final_loss": round(loss_value, 4),
        f"validation_recall@{training.recall_k}": round(recall, 4),
        "epochs": training.epochs,
        "seed": training.seed,
    }
    return TrainingResult(model, metrics)


def _take(batch: Any, rows: torch.Tensor) -> Any:
    """The same kind of tensor batch, restricted to ``rows``."""
    return type(batch)(*(tensor[rows] for tensor in vars(batch).values()))
