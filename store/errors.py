"""Exceptions of the store package::

StoreError
├── StoreOpenError       the database cannot be opened (locked, corrupt, unreadable)
│   ├── StoreInUseError  another process holds it
│   └── StoreDamagedError its files are damaged (the message names the ways out)
└── VersionNotFoundError a requested version is not held for an entity
"""

from __future__ import annotations

__all__ = [
    "NoServingVersionError",
    "StoreDamagedError",
    "StoreError",
    "StoreInUseError",
    "StoreOpenError",
    "VersionNotFoundError",
    "VersionUnreachableError",
]


class StoreError(Exception):
    """Base of every error raised by the store package."""


class StoreOpenError(StoreError):
    """The RocksDB database cannot be opened."""


class StoreInUseError(StoreOpenError):
    """Another process holds the database (RocksDB's lock)."""


class StoreDamagedError(StoreOpenError):
    """The database's files are damaged; restore a backup or rebuild from the topic."""


class VersionNotFoundError(StoreError):
    """The entity exists but holds no vector of the requested version."""


class VersionUnreachableError(StoreError):
    """No aligner chain leads from the serving version to the requested one."""


class NoServingVersionError(StoreError):
    """No serving version has been set yet."""
