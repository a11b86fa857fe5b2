"""Exceptions of the models package::

ModelError
├── RegistryError          the registry directory or a manifest is unusable
│   ├── VersionMissingError    no such version in the registry
│   ├── IntegrityError         weights do not match the manifest's sha256
│   │   └── UnloadableError    weights are not plain tensors of the version's architecture
│   └── IncompatibleVersionsError  no chain of backward aligners between two versions
├── TrainingError          training cannot run on the given data
└── ImportRefusedError     exported towers (or an aligner) cannot be imported as a version
"""

from __future__ import annotations

__all__ = [
    "ImportRefusedError",
    "IncompatibleVersionsError",
    "IntegrityError",
    "ModelError",
    "RegistryError",
    "TrainingError",
    "UnloadableError",
    "VersionMissingError",
]


class ModelError(Exception):
    """Base of every error raised by the models package."""


class RegistryError(ModelError):
    """The registry directory or a manifest is unusable."""


class VersionMissingError(RegistryError):
    """The requested version is not in the registry."""


class IntegrityError(RegistryError):
    """A version's weights do not match the sha256 recorded in its manifest."""


class UnloadableError(IntegrityError):
    """A version's weights (or aligner) match their sha256 but are not plain tensors of its
    architecture: a pickled object, a truncated file, another model's tensors."""


class TrainingError(ModelError):
    """Training cannot run on the given data."""


class IncompatibleVersionsError(RegistryError):
    """No chain of backward aligners leads from one version to another."""


class ImportRefusedError(ModelError):
    """Exported towers, or a given aligner, cannot be imported as a version: nothing is
    written. The message says what is wrong and how to fix it."""
