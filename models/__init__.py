"""Encoders and their registry: the two-tower model, features, training and versions."""

from __future__ import annotations

from models.aligners import ALIGNER_METHODS, BackwardAligner, fit_least_squares, fit_procrustes
from models.bootstrap import ensure_default_encoder
from models.compat_loss import BackwardCompatibilityLoss
from models.contract import InputContract
from models.encoder import Encoder, EncoderConfig, TorchEncoder, TwoTowerModel
from models.errors import (
    ImportRefusedError,
    IncompatibleVersionsError,
    IntegrityError,
    ModelError,
    RegistryError,
    TrainingError,
    VersionMissingError,
)
from models.exported import ExportedEncoder
from models.features import EVENT_TYPES, ItemInput, ItemState, UserInput, UserState
from models.featurize import Features, featurize, featurize_pairs
from models.importing import ImportRequest, import_version
from models.interaction_log import InteractionLog, read_interaction_log
from models.registry import EncoderRegistry, Manifest
from models.synthetic import SyntheticWorld
from models.training import TrainingConfig, TrainingProgress, TrainingResult, train_two_tower
from models.versioning import VersionRequest, train_version

__all__ = [
    "ALIGNER_METHODS",
    "EVENT_TYPES",
    "BackwardAligner",
    "BackwardCompatibilityLoss",
    "Encoder",
    "EncoderConfig",
    "EncoderRegistry",
    "ExportedEncoder",
    "Features",
    "ImportRefusedError",
    "ImportRequest",
    "IncompatibleVersionsError",
    "InputContract",
    "IntegrityError",
    "InteractionLog",
    "ItemInput",
    "ItemState",
    "Manifest",
    "ModelError",
    "RegistryError",
    "SyntheticWorld",
    "TorchEncoder",
    "TrainingConfig",
    "TrainingError",
    "TrainingProgress",
    "TrainingResult",
    "TwoTowerModel",
    "UserInput",
    "UserState",
    "VersionMissingError",
    "VersionRequest",
    "ensure_default_encoder",
    "featurize",
    "featurize_pairs",
    "fit_least_squares",
    "fit_procrustes",
    "import_version",
    "read_interaction_log",
    "train_two_tower",
    "train_version",
]
