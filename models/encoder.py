"""The two-tower encoder: a torch module plus the batched, versioned wrapper the stream uses.

User tower: hashed user-id embedding, plus a pooled embedding of the recent items weighted
by a learned per-type weight and by recency, then an MLP, L2-normalised.
Item tower: hashed item-id embedding plus the item's dynamic features, then an MLP,
L2-normalised. Hashing lets unseen ids embed without rebuilding a vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from models.features import EVENT_TYPES, ITEM_FEATURES, TYPE_CODES, ItemInput, UserInput
from models.hashing import id_buckets

__all__ = ["Encoder", "EncoderConfig", "ItemBatch", "TorchEncoder", "TwoTowerModel", "UserBatch"]

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

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float | int]) -> EncoderConfig:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)  # type: ignore[arg-type]


@dataclass
class UserBatch:
    """Tensors for a batch of users (histories padded to ``history``)."""

    user_buckets: torch.Tensor  # [B, 2] int64
    item_buckets: torch.Tensor  # [B, L, 2] int64
    type_codes: torch.Tensor  # [B, L] int64
    weights: torch.Tensor  # [B, L] float32: recency x rating factor x mask


@dataclass
class ItemBatch:
    item_buckets: torch.Tensor  # [B, 2] int64
    features: torch.Tensor  # [B, ITEM_FEATURES] float32


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
        self.item_mlp = nn.Sequential(
            nn.Linear(config.id_dim + ITEM_FEATURES, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.dim),
        )
        nn.init.normal_(self.user_ids.weight, std=0.1)
        nn.init.normal_(self.item_ids.weight, std=0.1)

    def encode_users(self, batch: UserBatch) -> torch.Tensor:
        own = self.user_ids(batch.user_buckets).sum(dim=1)
        history = self.item_ids(batch.item_buckets).sum(dim=2)
        weights = functional.softplus(self.type_weight)[batch.type_codes] * batch.weights
        pooled = (weights.unsqueeze(-1) * history).sum(dim=1) / (weights.sum(dim=1, keepdim=True) + 1e-6)
        return functional.normalize(self.user_mlp(torch.cat([own, pooled], dim=1)), dim=1)

    def encode_items(self, batch: ItemBatch) -> torch.Tensor:
        own = self.item_ids(batch.item_buckets).sum(dim=1)
        features = self.item_norm(batch.features)
        return functional.normalize(self.item_mlp(torch.cat([own, features], dim=1)), dim=1)


def user_batch(inputs: Sequence[UserInput], config: EncoderConfig) -> UserBatch:
    """Featurise users: hash ids, pad histories, weight by recency and rating value.

    Histories are flattened into one list and weighted with array arithmetic: the only
    per-item Python work is the (cached) id hash.
    """
    size, length = len(inputs), config.history
    user_buckets = np.array(
        [id_buckets("user", user.user_id, config.buckets) for user in inputs], dtype=np.int64
    ).reshape(size, 2)
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
    item_buckets = np.zeros((size, length, 2), dtype=np.int64)
    type_codes = np.zeros((size, length), dtype=np.int64)
    weights = np.zeros((size, length), dtype=np.float32)
    if items:
        at = (np.array(rows), np.array(cols))
        item_buckets[at] = [id_buckets("item", item_id, config.buckets) for item_id in items]
        code_array = np.array(codes, dtype=np.int64)
        type_codes[at] = code_array
        value_array = np.array(values, dtype=np.float64)
        rated = (code_array == _RATING) & ~np.isnan(value_array)
        factor = np.where(rated, np.clip(np.nan_to_num(value_array), 0.0, 5.0) / 5.0 + 0.1, 1.0)
        age_ms = np.array(references, dtype=np.float64) - np.array(stamps, dtype=np.float64)
        weights[at] = factor * np.exp(-age_ms / (config.recency_tau_seconds * 1000.0))
    return UserBatch(
        torch.from_numpy(user_buckets),
        torch.from_numpy(item_buckets),
        torch.from_numpy(type_codes),
        torch.from_numpy(weights),
    )


def item_batch(inputs: Sequence[ItemInput], config: EncoderConfig) -> ItemBatch:
    buckets = np.array([id_buckets("item", item.item_id, config.buckets) for item in inputs])
    features = np.log1p(np.array([item.counts for item in inputs], dtype=np.float64)).astype(np.float32)
    return ItemBatch(
        torch.from_numpy(buckets.reshape(len(inputs), 2).astype(np.int64)),
        torch.from_numpy(features.reshape(len(inputs), ITEM_FEATURES)),
    )


class Encoder(Protocol):
    """What the stream needs from an encoder version."""

    version: int
    dim: int

    def encode_users(self, inputs: Sequence[UserInput]) -> np.ndarray: ...

    def encode_items(self, inputs: Sequence[ItemInput]) -> np.ndarray: ...


class TorchEncoder:
    """A fixed encoder version in inference mode: inputs in, float32 unit vectors out."""

    def __init__(self, model: TwoTowerModel, version: int) -> None:
        self.model = model.eval()
        self.version = version
        self.config = model.config
        self.dim = model.config.dim

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
