"""Exceptions of the store package::

StoreError
├── StoreOpenError       the database cannot be opened (locked, corrupt, unreadable)
└── VersionNotFoundError a requested version is not held for an entity
"""

from __future__ import annotations

__all__ = ["StoreError", "StoreOpenError", "VersionNotFoundError"]


class StoreError(Exception):
    """Base of every error raised by the store package."""


class StoreOpenError(StoreError):
    """The RocksDB database cannot be opened."""


class VersionNotFoundError(StoreError):
    """The entity exists but holds no vector of the requested version."""
