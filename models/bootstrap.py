"""Version 1 of the default encoder, trained briefly on synthetic data when a registry is empty."""

from __future__ import annotations

from collections.abc import Callable

from models.encoder import EncoderConfig
from models.errors import RegistryError
from models.registry import EncoderRegistry, Manifest
from models.synthetic import SyntheticWorld
from models.training import TrainingConfig, TrainingProgress, train_two_tower

__all__ = ["DEMO_EVENTS", "ensure_default_encoder"]

DEMO_EVENTS = 30_000
_DAY_MS = 86_400_000
_DEMO_END_MS = 1_767_225_600_000  # a fixed timeline (2026-01-01) keeps the weights reproducible


def ensure_default_encoder(
    registry: EncoderRegistry,
    seed: int = 0,
    progress: Callable[[TrainingProgress], None] | None = None,
) -> Manifest | None:
    """Train and store version 1 if the registry holds no version; return its manifest.

    Returns ``None`` when the registry already has a version. Deterministic for a seed: the
    same seed gives the same weights on the same machine.
    """
    if registry.latest() is not None:
        return None
    world = SyntheticWorld(seed=seed)
    start = _DEMO_END_MS - 7 * _DAY_MS
    events = world.events(DEMO_EVENTS, start_ms=start, span_ms=7 * _DAY_MS, seed=seed)
    result = train_two_tower(events, EncoderConfig(), TrainingConfig(epochs=2, seed=seed), progress)
    training = {"data": f"synthetic, {DEMO_EVENTS} events, seed {seed}", **result.metrics}
    try:
        return registry.save(result.model, training=training)
    except RegistryError:
        if registry.latest() is None:
            raise
        return None  # another worker sharing the registry created version 1 meanwhile
