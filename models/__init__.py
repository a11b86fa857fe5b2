"""Encoders and their registry: the two-tower model, features, training and versions."""

from __future__ import annotations

from models.bootstrap import ensure_default_encoder
from models.encoder import Encoder, EncoderConfig, TorchEncoder, TwoTowerModel
from models.errors import IntegrityError, ModelError, RegistryError, TrainingError, VersionMissingError
from models.features import EVENT_TYPES, ItemInput, ItemState, UserInput, UserState
from models.registry import EncoderRegistry, Manifest
from models.synthetic import SyntheticWorld
from models.training import TrainingConfig, TrainingResult, train_two_tower

__all__ = [
    "EVENT_TYPES",
    "Encoder",
    "EncoderConfig",
    "EncoderRegistry",
    "IntegrityError",
    "ItemInput",
    "ItemState",
    "Manifest",
    "ModelError",
    "RegistryError",
    "SyntheticWorld",
    "TorchEncoder",
    "TrainingConfig",
    "TrainingError",
    "TrainingResult",
    "TwoTowerModel",
    "UserInput",
    "UserState",
    "VersionMissingError",
    "ensure_default_encoder",
    "train_two_tower",
]
