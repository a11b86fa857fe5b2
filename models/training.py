"""Training a two-tower encoder version from an interaction log.

Examples are built by replaying the log in time order through the same entity state the
stream keeps (:mod:`models.features`): for each interaction, the user's state just before it
is the query and the item's state just before it is the positive. The log is split in time:
the first ``1 - validation_fraction`` of events train, the rest (the next period) validate.
Loss: in-batch sampled softmax with logQ correction.

With :class:`AlignmentTargets` the model is trained jointly with a backward aligner into its
parent's space (the BC-Aligner recipe): task loss plus ``weight`` times the squared distance
between the aligner's output and the parent's embeddings of the same inputs and, multi-step,
the same distance after every older frozen aligner to each older version's embeddings (the
terms are averaged). The alignment is applied to the batch's users and items and to a batch
of every known entity's state at the cut, so rare ids are aligned too.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from models.aligners import BackwardAligner
from models.encoder import EncoderConfig, TorchEncoder, TwoTowerModel, item_batch, user_batch
from models.errors import TrainingError
from models.evaluation import NextItems, rank_next_items
from models.features import TYPE_CODES, ItemInput, ItemState, UserInput, UserState

__all__ = [
    "AlignmentTargets",
    "Examples",
    "TrainingConfig",
    "TrainingProgress",
    "TrainingResult",
    "alignment_loss",
    "build_examples",
    "cross_task_loss",
    "train_two_tower",
    "validation_recall",
]


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 3
    batch_size: int = 512
    learning_rate: float = 3e-3
    temperature: float = 0.07
    validation_fraction: float = 0.1
    recall_k: int = 10
    seed: int = 0
    # Weight of the logQ correction: 1 undoes the popularity bias of in-batch negatives
    # exactly; above 1 the scores keep (weight - 1) x log popularity, a prior towards popular
    # items that pays where the next items are mostly popular ones (real ratings).
    logq_weight: float = 1.0


@dataclass(frozen=True)
class TrainingProgress:
    step: int
    steps: int
    loss: float
    validation_recall: float | None = None


@dataclass
class TrainingResult:
    model: TwoTowerModel
    metrics: dict[str, Any]
    aligner: BackwardAligner | None = None


@dataclass
class Examples:
    """Training and validation examples plus entity states at the cut between them."""

    users: list[UserInput]
    items: list[ItemInput]
    split: int
    users_at_cut: dict[str, UserInput]
    items_at_cut: dict[str, ItemInput]
    train_counts_user: Counter[str] = field(default_factory=Counter)
    train_counts_item: Counter[str] = field(default_factory=Counter)
    validation_users: set[str] = field(default_factory=set)
    _next_items: NextItems | None = field(default=None, repr=False, compare=False)

    def catalogue(self) -> list[ItemInput]:
        """Every item of the log, with its state at the cut (no counts if first seen later,
        only the tags its first event declared: a cold-start item)."""
        seen = dict(self.items_at_cut)
        empty = ItemState().to_input("").counts
        for item in self.items[self.split :]:
            seen.setdefault(item.item_id, ItemInput(item.item_id, empty, item.tags))
        return list(seen.values())

    def cold_item_queries(self) -> np.ndarray:
        """Validation queries (rows of :meth:`next_items`) whose next item had no interaction
        in the training period: the cold-start items."""
        items = self.items[self.split :]
        return np.flatnonzero([self.train_counts_item[item.item_id] == 0 for item in items])

    def cold_items(self) -> np.ndarray:
        """Catalogue rows of the items with no interaction in the training period."""
        counts = self.train_counts_item
        return np.flatnonzero([counts[item.item_id] == 0 for item in self.catalogue()])

    def next_items(self) -> NextItems:
        """The validation queries' next items and already-seen items, as catalogue rows
        (computed once: the examples do not change after :func:`build_examples`)."""
        if self._next_items is not None:
            return self._next_items
        position = {item.item_id: row for row, item in enumerate(self.catalogue())}
        queries = self.users[self.split :]
        targets = np.array([position[item.item_id] for item in self.items[self.split :]], dtype=np.int64)
        seen = [
            np.array([position[i] for i in set(query.item_ids) if i in position], dtype=np.int64)
            for query in queries
        ]
        self._next_items = NextItems(targets, seen)
        return self._next_items


@dataclass
class AlignmentTargets:
    """What the joint aligner must reproduce, per ancestor (parent first), per train example."""

    user_targets: list[torch.Tensor]
    item_targets: list[torch.Tensor]
    chain: list[BackwardAligner]  # chain[k]: ancestor k's space -> ancestor k+1's (frozen)
    weight: float = 8.0
    multi_step: bool = True
    # Every entity once (its state at the cut), so rare ids are aligned too, not only the
    # ids that training examples happen to sample.
    entity_users: list[UserInput] = field(default_factory=list)
    entity_items: list[ItemInput] = field(default_factory=list)
    entity_user_targets: list[torch.Tensor] = field(default_factory=list)
    entity_item_targets: list[torch.Tensor] = field(default_factory=list)
    # Weight of the cross-version task term: the batch's users carried back by the aligner
    # (and, multi-step, the chain) must find their next item among each ancestor's own item
    # vectors, with the same in-batch softmax as the task (0: the distance term alone).
    cross_task_weight: float = 0.0


def build_examples(
    events: Sequence[dict[str, Any]], history: int, validation_fraction: float = 0.1
) -> Examples:
    """Replay ``events`` (sorted by ``ts``) through user and item state."""
    cut = int(len(events) * (1.0 - validation_fraction))
    user_states: dict[str, UserState] = {}
    item_states: dict[str, ItemState] = {}
    examples = Examples([], [], 0, {}, {})
    for index, event in enumerate(events):
        if index == cut:
            examples.split = len(examples.users)
            examples.users_at_cut = {u: s.to_input(u) for u, s in user_states.items()}
            examples.items_at_cut = {i: s.to_input(i) for i, s in item_states.items()}
        user_id, item_id = str(event["user_id"]), str(event["item_id"])
        code, ts = TYPE_CODES[str(event["type"])], int(event["ts"])
        user = user_states.setdefault(user_id, UserState(window=history))
        item = item_states.setdefault(item_id, ItemState())
        if "item_tags" in event:  # what the item is, known with this event (as in the stream)
            item.set_tags(event["item_tags"])
        if user.item_ids:
            examples.users.append(user.to_input(user_id))
            examples.items.append(item.to_input(item_id))
        if index < cut:
            examples.train_counts_user[user_id] += 1
            examples.train_counts_item[item_id] += 1
        else:
            examples.validation_users.add(user_id)
        value = event.get("value")
        user.add(item_id, code, None if value is None else float(value), ts)
        item.add(code, ts)
    if cut >= len(events):
        examples.split = len(examples.users)
        examples.users_at_cut = {u: s.to_input(u) for u, s in user_states.items()}
        examples.items_at_cut = {i: s.to_input(i) for i, s in item_states.items()}
    return examples


def validation_recall(model: TwoTowerModel, examples: Examples, k: int) -> float:
    """Recall@k of the next item on the validation period, among every item of the log the
    user has not seen (:mod:`models.evaluation`)."""
    encoder = TorchEncoder(model, version=0)
    catalogue = examples.catalogue()
    queries = examples.users[examples.split :]
    if not queries:
        return math.nan
    truth = examples.next_items()
    return rank_next_items(encoder.encode_users(queries), encoder.encode_items(catalogue), truth, k).recall


def _take(batch: Any, rows: torch.Tensor) -> Any:
    """The same kind of tensor batch, restricted to ``rows``."""
    return type(batch)(*(None if tensor is None else tensor[rows] for tensor in vars(batch).values()))


def cross_task_loss(
    users: torch.Tensor,
    aligner: BackwardAligner,
    ancestor_items: list[torch.Tensor],
    chain: list[BackwardAligner],
    multi_step: bool,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean over ancestors of the task loss of the new users carried back, against each
    ancestor's vectors of the batch's items (in-batch softmax with logQ correction): the
    carried queries are trained to retrieve in the old space, which is what a consumer pinned
    to that version asks of them, not only to sit near the old queries."""
    carried = aligner(users)
    labels = torch.arange(len(users))
    terms = []
    for step, items in enumerate(ancestor_items):
        logits = functional.normalize(carried, dim=1) @ items.T / temperature - log_q.unsqueeze(0)
        terms.append(functional.cross_entropy(logits, labels))
        if not multi_step or step >= len(chain):
            break
        carried = chain[step](carried)
    return torch.stack(terms).mean()


def alignment_loss(
    vectors: torch.Tensor,
    aligner: BackwardAligner,
    per_ancestor: list[torch.Tensor],
    chain: list[BackwardAligner],
    multi_step: bool,
) -> torch.Tensor:
    """Mean over ancestors of the squared distance between carried-back ``vectors`` and their
    targets (summed over dimensions, so the weight does not depend on the dimension)."""
    carried = aligner(vectors)
    terms = []
    for step, target in enumerate(per_ancestor):
        terms.append(((carried - target) ** 2).sum(dim=1).mean())
        if not multi_step or step >= len(chain):
            break
        carried = chain[step](carried)
    return torch.stack(terms).mean()


class _Aligning:
    """The alignment part of the loss for one training run."""

    def __init__(
        self, targets: AlignmentTargets, aligner: BackwardAligner, config: EncoderConfig, seed: int
    ) -> None:
        self.targets, self.aligner = targets, aligner
        self.entity_users = user_batch(targets.entity_users, config) if targets.entity_users else None
        self.entity_items = item_batch(targets.entity_items, config) if targets.entity_items else None
        self.generator = torch.Generator().manual_seed(seed + 1)

    def loss(
        self, model: TwoTowerModel, users: torch.Tensor, items: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        t = self.targets
        terms = [
            alignment_loss(users, self.aligner, [x[rows] for x in t.user_targets], t.chain, t.multi_step),
            alignment_loss(items, self.aligner, [x[rows] for x in t.item_targets], t.chain, t.multi_step),
        ]
        for batch, encode, targets in (
            (self.entity_users, model.encode_users, t.entity_user_targets),
            (self.entity_items, model.encode_items, t.entity_item_targets),
        ):
            if batch is None:
                continue
            count = len(targets[0])
            sample = torch.randint(0, count, (min(len(rows), count),), generator=self.generator)
            vectors = encode(_take(batch, sample))  # type: ignore[operator]
            terms.append(
                alignment_loss(vectors, self.aligner, [x[sample] for x in targets], t.chain, t.multi_step)
            )
        return torch.stack(terms).mean()


def train_two_tower(
    events: Sequence[dict[str, Any]] | Examples,
    config: EncoderConfig,
    training: TrainingConfig,
    progress: Callable[[TrainingProgress], None] | None = None,
    alignment: AlignmentTargets | None = None,
    warm_start: TwoTowerModel | None = None,
) -> TrainingResult:
    """Train a model (and, with ``alignment``, its backward aligner) on a log.

    With ``warm_start`` (a parent of the same architecture) the model starts from the
    parent's weights and the aligner from the identity, so training begins compatible and
    the alignment loss keeps it there while the task loss improves it.
    """
    examples = (
        events
        if isinstance(events, Examples)
        else build_examples(
            sorted(events, key=lambda e: int(e["ts"])), config.history, training.validation_fraction
        )
    )
    split = examples.split
    if split < max(2, training.batch_size // 4):
        raise TrainingError(f"only {split} training examples; need a longer interaction log")
    torch.manual_seed(training.seed)
    generator = torch.Generator().manual_seed(training.seed)
    model = TwoTowerModel(config)
    if warm_start is not None and warm_start.config == config:
        model.load_state_dict(warm_start.state_dict())
    parameters = list(model.parameters())
    aligner, aligning = None, None
    if alignment is not None:
        aligner = BackwardAligner(config.dim, alignment.user_targets[0].shape[1])
        if warm_start is not None and warm_start.config == config:
            with torch.no_grad():
                aligner.linear.weight.copy_(torch.eye(config.dim))
        parameters += list(aligner.parameters())
        for frozen in alignment.chain:
            frozen.requires_grad_(False)
        aligning = _Aligning(alignment, aligner, config, training.seed)
    optimizer = torch.optim.Adam(parameters, lr=training.learning_rate)
    user_tensors = user_batch(examples.users[:split], config)
    item_tensors = item_batch(examples.items[:split], config)
    # logQ correction: in-batch negatives are drawn by popularity, so without it the model
    # learns to push popular items down (Yi et al., RecSys 2019).
    frequency = Counter(item.item_id for item in examples.items[:split])
    log_q = training.logq_weight * torch.tensor(
        [math.log(frequency[item.item_id] / split) for item in examples.items[:split]]
    )
    steps = math.ceil(split / training.batch_size) * training.epochs
    step, loss_value, recall = 0, math.nan, math.nan
    for _ in range(training.epochs):
        model.train()
        order = torch.randperm(split, generator=generator)
        for start in range(0, split, training.batch_size):
            rows = order[start : start + training.batch_size]
            users = model.encode_users(_take(user_tensors, rows))
            items = model.encode_items(_take(item_tensors, rows))
            logits = users @ items.T / training.temperature - log_q[rows].unsqueeze(0)
            loss = functional.cross_entropy(logits, torch.arange(len(rows)))
            if aligning is not None:
                loss = loss + aligning.targets.weight * aligning.loss(model, users, items, rows)
                if aligning.targets.cross_task_weight:
                    t = aligning.targets
                    loss = loss + t.cross_task_weight * cross_task_loss(
                        users,
                        aligning.aligner,
                        [x[rows] for x in t.item_targets],
                        t.chain,
                        t.multi_step,
                        log_q[rows],
                        training.temperature,
                    )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = loss.item()
            if progress is not None and step % steps_per_report(steps) == 0 and step < steps:
                progress(TrainingProgress(step, steps, loss_value))
        model.eval()
        recall = validation_recall(model, examples, training.recall_k)
        if progress is not None:
            progress(TrainingProgress(step, steps, loss_value, recall))
    metrics = {
        "examples": len(examples.users),
        "train_examples": split,
        "final_loss": round(loss_value, 4),
        f"validation_recall@{training.recall_k}": round(recall, 4),
        "epochs": training.epochs,
        "seed": training.seed,
    }
    return TrainingResult(model.eval(), metrics, aligner.eval() if aligner is not None else None)


def steps_per_report(steps: int) -> int:
    return max(1, steps // 100)
