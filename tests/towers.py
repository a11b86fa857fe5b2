"""Tower pairs a team might export: plain PyTorch modules over the input contract's tensors,
and helpers that export and save them as ``embstream models import`` expects."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from models import exported
from models.contract import InputContract
from models.exported import contract_batches
from models.features import ITEM_FEATURES


class GRUUserTower(nn.Module):
    """A GRU over the weighted history, then the user's own id."""

    def __init__(self, contract: InputContract, dim: int = 32) -> None:
        super().__init__()
        self.ids = nn.Embedding(contract.buckets, 16)
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.out = nn.Linear(32 + 16, dim)

    def forward(
        self,
        user_buckets: torch.Tensor,
        item_buckets: torch.Tensor,
        type_codes: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        own = self.ids(user_buckets).sum(1)
        steps = self.ids(item_buckets).sum(2) * weights.unsqueeze(-1)
        _, last = self.gru(steps)
        return functional.normalize(self.out(torch.cat([own, last[0]], 1)), dim=1)


class PooledUserTower(nn.Module):
    """Mean pooling of history items, with a learned weight per event type."""

    def __init__(self, contract: InputContract, dim: int = 48) -> None:
        super().__init__()
        self.items = nn.Embedding(contract.buckets, 24)
        self.users = nn.Embedding(contract.buckets, 24)
        self.types = nn.Embedding(5, 1)
        self.out = nn.Sequential(nn.Linear(48, 64), nn.Tanh(), nn.Linear(64, dim))

    def forward(
        self,
        user_buckets: torch.Tensor,
        item_buckets: torch.Tensor,
        type_codes: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        weight = weights * torch.sigmoid(self.types(type_codes).squeeze(-1))
        pooled = (self.items(item_buckets).sum(2) * weight.unsqueeze(-1)).sum(1) / (
            weight.sum(1, keepdim=True) + 1e-6
        )
        return functional.normalize(self.out(torch.cat([self.users(user_buckets).sum(1), pooled], 1)), dim=1)


class MLPItemTower(nn.Module):
    def __init__(self, contract: InputContract, dim: int = 32) -> None:
        super().__init__()
        self.ids = nn.Embedding(contract.buckets, 16)
        self.out = nn.Sequential(nn.Linear(16 + ITEM_FEATURES, 32), nn.ReLU(), nn.Linear(32, dim))

    def forward(self, item_buckets: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return functional.normalize(self.out(torch.cat([self.ids(item_buckets).sum(1), features], 1)), dim=1)


def export_tower(
    module: nn.Module, tower: str, path: Path, contract: InputContract | None = None, dynamic: bool = True
) -> Path:
    """Export ``module`` (``tower`` is "user" or "item") on contract tensors and save it."""
    users, items = contract_batches(contract or InputContract(), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a GRU's flat weights are reported as assigned attributes
        path.write_bytes(
            exported.export_tower(module, (users if tower == "user" else items).tensors(), dynamic)
        )
    return path


def export_pair(
    user: nn.Module, item: nn.Module, directory: Path, contract: InputContract | None = None
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return (
        export_tower(user, "user", directory / "user_tower.pt2", contract),
        export_tower(item, "item", directory / "item_tower.pt2", contract),
    )
