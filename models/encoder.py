"""The two-tower encoder: a torch module plus the batched, versioned wrapper the stream uses.

User tower: hashed user-id embedding, plus a pooled embedding of the recent items weighted
by a learned per-type weight and by recency, then an MLP, L2-normalised.
Item tower: hashed item-id embedding plus the item's dynamic features (and, with
``item_tags``, the mean embedding of its tags), then an MLP, L2-normalised. Hashing lets
unseen ids embed without rebuilding a vocabulary; tags let a brand-new item start from
what it is, not only from an untrained id bucket.

With ``item_prototypes`` (an architecture option, evaluated by ``python -m
benchmarks.real_data --item-prototypes``; not offered by the CLI, as it lost there) the item
tower is not learned: an item's vector is the normalised sum of the fixed prototypes of its two id
buckets (:func:`fixed_prototypes`, the same for every version of the same ``buckets`` and
``dim``), and only the user tower trains against them. Items then sit at the same place in
every such version (the stationary targets of Biondi et al.'s d-Simplex fixed classifier,
with one fixed random direction per bucket since there are far more items than ``dim + 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from models.contract import InputContract
from models.features import EVENT_TYPES, ITEM_FEATURES, MAX_ITEM_TAGS, TYPE_CODES, ItemInput, UserInput
from models.hashing import bucket_pairs, id_hash64, id_hashes64
from models.state_batch import ItemCounts, UserHistories

__all__ = [
    "Encoder",
    "EncoderConfig",
    "ItemBatch",
    "TorchEncoder",
    "TwoTowerModel",
    "UserBatch",
    "fixed_prototypes",
    "item_batch",
    "user_batch",
]

_RATING = TYPE_CODES["rating"]


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of one encoder version (stored in its manifest)."""

    dim: int = 64
    id_dim: int = 32
    buckets: int = 1 << 15
    hidden: int = 128
    history: int = 50
    recency_tau_seconds: float = 86_400.0
    item_prototypes: bool = False  # items are fixed prototypes, not a learned tower
    item_tags: bool = False  # the item tower reads the item's tags (MAX_ITEM_TAGS slots)
    # Share of training examples whose user-id embedding is dropped; with it, user ids start
    # at zero, so an id never trained (a new user) reads as a dropped one: the tower learns
    # to place users by their history alone.
    user_id_dropout: float = 0.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @property
    def inputs(self) -> InputContract:
        """The input contract this architecture's towers read."""
        return InputContract(
            self.history, self.buckets, self.recency_tau_seconds, MAX_ITEM_TAGS if self.item_tags else 0
        )

    @classmethod
    def from_dict(cls, data: dict[str, float | int | bool]) -> EncoderConfig:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)  # type: ignore[arg-type]


@dataclass
class UserBatch:
    """Tensors for a batch of users (histories padded to ``history``)."""

    user_buckets: torch.Tensor  # [B, 2] int64
    item_buckets: torch.Tensor  # [B, L, 2] int64
    type_codes: torch.Tensor  # [B, L] int64
    weights: torch.Tensor  # [B, L] float32: recency x rating factor x mask

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The user tower's inputs in contract order (:data:`models.contract.USER_TENSORS`)."""
        return (self.user_buckets, self.item_buckets, self.type_codes, self.weights)


@dataclass
class ItemBatch:
    item_buckets: torch.Tensor  # [B, 2] int64
    features: torch.Tensor  # [B, ITEM_FEATURES] float32
    tag_buckets: torch.Tensor | None = None  # [B, T] int64, 0 where no tag (tag-reading towers)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The item tower's inputs in contract order
        (:attr:`models.contract.InputContract.item_tensors`)."""
        if self.tag_buckets is None:
            return (self.item_buckets, self.features)
        return (self.item_buckets, self.features, self.tag_buckets)


class TwoTowerModel(nn.Module):
    """The trainable module. ``encode_users`` / ``encode_items`` return unit vectors."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.user_ids = nn.Embedding(config.buckets, config.id_dim)
        self.item_ids = nn.Embedding(config.buckets, config.id_dim)
        self.type_weight = nn.Parameter(torch.zeros(len(EVENT_TYPES)))
        self.user_mlp = nn.Sequential(
            nn.Linear(2 * config.id_dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.dim)
        )
        self.item_norm = nn.LayerNorm(ITEM_FEATURES)
        tag_dim = config.id_dim if config.item_tags else 0
        if config.item_tags:
            self.tag_ids = nn.Embedding(config.buckets, config.id_dim, padding_idx=0)
            nn.init.normal_(self.tag_ids.weight[1:], std=0.1)
        self.item_mlp = nn.Sequential(
            nn.Linear(config.id_dim + ITEM_FEATURES + tag_dim, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.dim),
        )
        nn.init.normal_(self.user_ids.weight, std=0.1)
        nn.init.normal_(self.item_ids.weight, std=0.1)
        if config.user_id_dropout:
            nn.init.zeros_(self.user_ids.weight)
        if config.item_prototypes:
            self.register_buffer("prototypes", fixed_prototypes(config.buckets, config.dim))
            self.item_norm.requires_grad_(False)
            self.item_mlp.requires_grad_(False)

    def encode_users(self, batch: UserBatch) -> torch.Tensor:
        own = self.user_ids(batch.user_buckets).sum(dim=1)
        if self.training and self.config.user_id_dropout:
            own = own * (torch.rand(len(own), 1) >= self.config.user_id_dropout)
        weights = functional.softplus(self.type_weight)[batch.type_codes] * batch.weights
        # The weighted sum of the history's item embeddings (both buckets of each item), in
        # one embedding_bag: no [users, history, 2, id_dim] tensor is materialised.
        size, length, pair = batch.item_buckets.shape
        pooled = functional.embedding_bag(
            batch.item_buckets.reshape(size, length * pair),
            self.item_ids.weight,
            per_sample_weights=weights.repeat_interleave(pair, dim=1),
            mode="sum",
        ) / (weights.sum(dim=1, keepdim=True) + 1e-6)
        return functional.normalize(self.user_mlp(torch.cat([own, pooled], dim=1)), dim=1)

    def encode_items(self, batch: ItemBatch) -> torch.Tensor:
        if self.config.item_prototypes:
            prototypes = self.get_buffer("prototypes")
            return functional.normalize(prototypes[batch.item_buckets].sum(dim=1), dim=1)
        own = self.item_ids(batch.item_buckets).sum(dim=1)
        parts = [own, self.item_norm(batch.features)]
        if self.config.item_tags:
            assert batch.tag_buckets is not None, "this version's item tower reads tags"
            # mean over the item's tags; padding (bucket 0) is left out, no tags give zeros
            parts.append(
                functional.embedding_bag(batch.tag_buckets, self.tag_ids.weight, mode="mean", padding_idx=0)
            )
        return functional.normalize(self.item_mlp(torch.cat(parts, dim=1)), dim=1)


#: Seed of :func:`fixed_prototypes`: part of the stationary format, never to change.
PROTOTYPE_SEED = 20_021


def fixed_prototypes(buckets: int, dim: int) -> torch.Tensor:
    """One fixed random direction per id bucket (Gaussian, so nearly orthogonal in high
    ``dim``): the same tensor for the same arguments on every machine and version."""
    generator = torch.Generator().manual_seed(PROTOTYPE_SEED)
    return functional.normalize(torch.randn(buckets, dim, generator=generator), dim=1)


def user_batch(inputs: Sequence[UserInput], config: EncoderConfig | InputContract) -> UserBatch:
    """Featurise users: hash ids, pad histories, weight by recency and rating value.

    A :class:`~models.state_batch.UserHistories` (the stream's batch form) is featurised
    from its arrays directly; a plain sequence of :class:`UserInput` is flattened first.
    Both end in :func:`_user_tensors`, so the two give the same tensors.
    """
    if isinstance(inputs, UserHistories):
        return _user_batch_from_histories(inputs, config)
    size, length = len(inputs), config.history
    rows: list[int] = []
    cols: list[int] = []
    items: list[str] = []
    codes: list[int] = []
    values: list[float] = []
    stamps: list[int] = []
    references: list[int] = []
    for row, user in enumerate(inputs):
        count = min(length, len(user.item_ids))
        if not count:
            continue
        rows.extend([row] * count)
        cols.extend(range(count))
        items.extend(user.item_ids[-count:])
        codes.extend(user.type_codes[-count:])
        values.extend(user.values[-count:])
        stamps.extend(user.timestamps_ms[-count:])
        references.extend([user.timestamps_ms[-1]] * count)
    return _user_tensors(
        [user.user_id for user in inputs],
        size,
        config,
        np.array(rows, dtype=np.int64),
        np.array(cols, dtype=np.int64),
        np.fromiter((id_hash64("item", item_id) for item_id in items), dtype=np.uint64, count=len(items)),
        np.array(codes, dtype=np.int64),
        np.array(values, dtype=np.float64),
        np.array(references, dtype=np.float64) - np.array(stamps, dtype=np.float64),
    )


def _user_batch_from_histories(histories: UserHistories, config: EncoderConfig | InputContract) -> UserBatch:
    """The newest ``config.history`` entries of each user, straight from the batch arrays."""
    lengths = histories.lengths
    skipped = np.maximum(lengths - config.history, 0)[histories.row]
    used = histories.position >= skipped
    ends = np.cumsum(lengths) - 1
    latest = np.zeros(len(lengths), dtype=np.int64)
    latest[lengths > 0] = histories.timestamps_ms[ends[lengths > 0]]
    rows = histories.row[used]
    return _user_tensors(
        histories.user_ids,
        len(histories),
        config,
        rows,
        histories.position[used] - skipped[used],
        histories.item_hashes[used],
        histories.type_codes[used].astype(np.int64),
        histories.values[used].astype(np.float64),
        latest[rows].astype(np.float64) - histories.timestamps_ms[used].astype(np.float64),
    )


def _user_tensors(
    user_ids: Sequence[str],
    size: int,
    config: EncoderConfig | InputContract,
    rows: np.ndarray,
    cols: np.ndarray,
    item_hashes: np.ndarray,
    codes: np.ndarray,
    values: np.ndarray,
    age_ms: np.ndarray,
) -> UserBatch:
    """Padded history tensors from flat entries (``rows``, ``cols``) and their columns."""
    length = config.history
    user_hashes = id_hashes64("user", user_ids)
    item_buckets = np.zeros((size, length, 2), dtype=np.int64)
    type_codes = np.zeros((size, length), dtype=np.int64)
    weights = np.zeros((size, length), dtype=np.float32)
    if len(rows):
        at = (rows, cols)
        item_buckets[at] = bucket_pairs(item_hashes, config.buckets)
        type_codes[at] = codes
        rated = (codes == _RATING) & ~np.isnan(values)
        factor = np.where(rated, np.clip(np.nan_to_num(values), 0.0, 5.0) / 5.0 + 0.1, 1.0)
        weights[at] = factor * np.exp(-age_ms / (config.recency_tau_seconds * 1000.0))
    return UserBatch(
        torch.from_numpy(bucket_pairs(user_hashes, config.buckets).reshape(size, 2)),
        torch.from_numpy(item_buckets),
        torch.from_numpy(type_codes),
        torch.from_numpy(weights),
    )


def item_batch(inputs: Sequence[ItemInput], config: EncoderConfig | InputContract) -> ItemBatch:
    """Featurise items: hashed id and ``log1p`` of the raw counts (an
    :class:`~models.state_batch.ItemCounts` is used as it is)."""
    if isinstance(inputs, ItemCounts):
        counts = inputs.counts.astype(np.float64, copy=False)
    else:
        counts = np.array([item.counts for item in inputs], dtype=np.float64)
    ids = inputs.item_ids if isinstance(inputs, ItemCounts) else [item.item_id for item in inputs]
    hashes = np.fromiter((id_hash64("item", item_id) for item_id in ids), np.uint64, len(ids))
    features = np.log1p(counts).astype(np.float32)
    slots = config.inputs.item_tags if isinstance(config, EncoderConfig) else config.item_tags
    return ItemBatch(
        torch.from_numpy(bucket_pairs(hashes, config.buckets).reshape(len(inputs), 2)),
        torch.from_numpy(features.reshape(len(inputs), ITEM_FEATURES)),
        torch.from_numpy(_tag_buckets(inputs, slots, config.buckets)) if slots else None,
    )


def _tag_buckets(inputs: Sequence[ItemInput], slots: int, buckets: int) -> np.ndarray:
    """``[items, slots]`` int64: ``1 + hash % (buckets - 1)`` per tag, 0 where none."""
    if isinstance(inputs, ItemCounts):
        if inputs.tags is None:
            return np.zeros((len(inputs), slots), dtype=np.int64)
        hashes = inputs.tags[:, :slots]
    else:
        hashes = np.zeros((len(inputs), slots), dtype=np.uint64)
        for row, item in enumerate(inputs):
            hashes[row, : len(item.tags[:slots])] = item.tags[:slots]
    mapped = (hashes % np.uint64(buckets - 1)).astype(np.int64) + 1
    return np.where(hashes != 0, mapped, 0)


class Encoder(Protocol):
    """What the stream needs from an encoder version."""

    version: int
    dim: int
    inputs: InputContract

    def encode_users(self, inputs: Sequence[UserInput]) -> np.ndarray: ...

    def encode_items(self, inputs: Sequence[ItemInput]) -> np.ndarray: ...


class TorchEncoder:
    """A fixed encoder version in inference mode: inputs in, float32 unit vectors out."""

    def __init__(self, model: TwoTowerModel, version: int) -> None:
        self.model = model.eval()
        self.version = version
        self.config = model.config
        self.dim = model.config.dim
        self.inputs = model.config.inputs

    def encode_users(self, inputs: Sequence[UserInput]) -> np.ndarray:
        if not inputs:
            return np.empty((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            return self.model.encode_users(user_batch(inputs, self.config)).numpy()

    def encode_items(self, inputs: Sequence[ItemInput]) -> np.ndarray:
        if not inputs:
            return np.empty((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            return self.model.encode_items(item_batch(inputs, self.config)).numpy()
