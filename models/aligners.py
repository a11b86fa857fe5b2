"""Backward aligners: linear maps (no bias) from a version's space into its parent's.

``B_v : R^{d_v} -> R^{d_parent}``. Chained, they carry a vector of the newest version back to
any older version: ``B_{j+1} o ... o B_v``. Fitting methods:

- ``bc-aligner``: learned jointly with the new encoder (see :mod:`models.training`);
- ``posthoc-linear``: least squares on paired embeddings of the same entities;
- ``procrustes``: the (semi-)orthogonal map closest to those pairs, which keeps distances;
- ``none``: no aligner; the version cannot be carried back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = [
    "ALIGNER_METHODS",
    "BackwardAligner",
    "fit_forward",
    "fit_least_squares",
    "fit_procrustes",
    "forward_apply",
]

ALIGNER_METHODS = ("bc-aligner", "posthoc-linear", "procrustes", "none")


class BackwardAligner(nn.Module):
    """One linear layer without bias, from ``source_dim`` to ``target_dim``."""

    def __init__(self, source_dim: int, target_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(source_dim, target_dim, bias=False)
        nn.init.normal_(self.linear.weight, std=1.0 / source_dim**0.5)

    @property
    def source_dim(self) -> int:
        return int(self.linear.in_features)

    @property
    def target_dim(self) -> int:
        return int(self.linear.out_features)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.linear(vectors)

    def apply(self, vectors: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """Map float32 rows of ``vectors`` (numpy in, numpy out)."""
        weight = self.linear.weight.detach().numpy()
        return np.ascontiguousarray(vectors.astype(np.float32) @ weight.T)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> BackwardAligner:
        """An aligner whose weight is ``matrix`` (shape ``[target_dim, source_dim]``)."""
        aligner = cls(matrix.shape[1], matrix.shape[0])
        with torch.no_grad():
            aligner.linear.weight.copy_(torch.from_numpy(matrix.astype(np.float32)))
        return aligner


def fit_least_squares(source: np.ndarray, target: np.ndarray) -> BackwardAligner:
    """Least-squares ``B`` with ``source @ B.T ≈ target`` (rows are the same entities)."""
    solution, *_ = np.linalg.lstsq(source.astype(np.float64), target.astype(np.float64), rcond=None)
    return BackwardAligner.from_matrix(solution.T)


def fit_procrustes(source: np.ndarray, target: np.ndarray) -> BackwardAligner:
    """The semi-orthogonal ``B`` (``B B^T = I`` when shrinking) closest to the pairs."""
    cross = target.astype(np.float64).T @ source.astype(np.float64)  # [target_dim, source_dim]
    left, _, right = np.linalg.svd(cross, full_matrices=False)
    return BackwardAligner.from_matrix(left @ right)


def fit_forward(parent: np.ndarray, new: np.ndarray) -> BackwardAligner:
    """The forward transform ``F`` of a version: least squares from its parent's vectors into
    its own (rows are the same entities), the FCT direction (old space to new)."""
    return fit_least_squares(parent, new)


def forward_apply(transform: BackwardAligner, vectors: np.ndarray) -> np.ndarray:
    """Parent vectors carried forward into the new space, unit length like the vectors the
    new encoder writes (so inner products against them rank as against native ones)."""
    carried = transform.apply(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(carried, axis=1, keepdims=True)
    return (carried / np.maximum(norms, 1e-12)).astype(np.float32)
