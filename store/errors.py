"""Exceptions of the store package::

StoreError
├── StoreOpenError       the database cannot be opened (locked, corrupt, unreadable)
└── VersionNotFoundError a requested version is not held for an entity
"""

from __future__ import annotations

__all__ = [
    "NoServingVersionError",
    "StoreError",
    "StoreOpenError",
    "VersionNotFoundError",
    "VersionUnreachableError",
]


class StoreError(Exception):
    """Base of every error raised by the store package."""


class StoreOpenError(StoreError):
    """The RocksDB database cannot be opened."""


class VersionNotFoundError(StoreError):
    """The entity exists but holds no vector of the requested version."""


class VersionUnreachableError(StoreError):
    """No aligner chain leads from the serving version to the requested one."""


class NoServingVersionError(StoreError):
    """No serving version has been set yet."""
