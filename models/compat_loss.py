"""The BC-Aligner loss term, for a team's own training loop.

:class:`BackwardCompatibilityLoss` owns a trainable backward aligner from the new towers'
space into a registry version's (the parent) and returns the alignment term of the
BC-Aligner recipe: the squared distance between the aligned new vectors and the parent's
vectors of the same entities and, multi-step, the same after each older frozen aligner to
each older version's vectors. Added to the task loss, it trains the towers and the aligner
together, so the new version can be served to consumers of the old ones::

    features = featurize(log, at_ms=cutoff)
    compat = BackwardCompatibilityLoss(registry, parent=1, dim=32, features=features)
    optimizer = torch.optim.Adam([*towers.parameters(), *compat.parameters()])
    ...
    loss = task_loss + compat(user_vectors, item_vectors, user_rows=rows_u, item_rows=rows_i)
    ...
    torch.save(compat.aligner.state_dict(), "backward.pt")  # embstream models import --aligner

The parent's (and ancestors') vectors of the features' entities are computed once, at
construction, from the same stream states.
"""

from __future__ import annotations

import torch
from torch import nn

from models.aligners import BackwardAligner
from models.errors import IncompatibleVersionsError
from models.featurize import Features
from models.registry import EncoderRegistry
from models.training import alignment_loss

__all__ = ["BackwardCompatibilityLoss"]


class BackwardCompatibilityLoss(nn.Module):
    """``weight`` x the alignment term; ``aligner`` (``[parent dim, dim]``) is its only
    trainable part. ``multi_step`` adds a term per older version reachable through the
    registry's aligner chain (they are averaged)."""

    def __init__(
        self,
        registry: EncoderRegistry,
        parent: int,
        dim: int,
        features: Features,
        weight: float = 8.0,
        multi_step: bool = True,
    ) -> None:
        super().__init__()
        self.parent, self.weight, self.multi_step = parent, weight, multi_step
        lineage = registry.lineage(parent)
        self.aligner = BackwardAligner(dim, registry.manifest(parent).dim)
        #: Frozen aligners: ``chain[k]`` carries ancestor k's space into ancestor k+1's.
        self.chain: list[BackwardAligner] = []
        user_targets, item_targets = [], []
        for position, version in enumerate(lineage):
            encoder = registry.load(version)
            user_targets.append(torch.from_numpy(encoder.encode_users(features.user_inputs)))
            item_targets.append(torch.from_numpy(encoder.encode_items(features.item_inputs)))
            if not multi_step or position == len(lineage) - 1:
                break
            try:
                older = registry.load_aligner(version)
            except IncompatibleVersionsError:
                older = None
            if older is None:
                break  # older versions are out of reach anyway
            self.chain.append(older.requires_grad_(False))
        self._user_targets, self._item_targets = user_targets, item_targets
        self.versions = lineage[: len(user_targets)]

    def forward(
        self,
        user_vectors: torch.Tensor | None = None,
        item_vectors: torch.Tensor | None = None,
        *,
        user_rows: torch.Tensor | None = None,
        item_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The weighted alignment term for new vectors of the features' users at
        ``user_rows`` and items at ``item_rows`` (all rows when not given)."""
        terms = []
        for vectors, rows, targets in (
            (user_vectors, user_rows, self._user_targets),
            (item_vectors, item_rows, self._item_targets),
        ):
            if vectors is None:
                continue
            picked = [target if rows is None else target[rows] for target in targets]
            if len(picked[0]) != len(vectors):
                raise ValueError(f"{len(vectors)} vectors for {len(picked[0])} rows of the features")
            terms.append(alignment_loss(vectors, self.aligner, picked, self.chain, self.multi_step))
        if not terms:
            raise ValueError("give user vectors, item vectors, or both")
        return self.weight * torch.stack(terms).mean()
