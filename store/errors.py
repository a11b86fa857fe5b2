"""Exceptions of the store package::

StoreError
├── StoreOpenError            the database cannot be opened (locked, corrupt, unreadable)
│   ├── StoreInUseError           another process holds it
│   └── StoreDamagedError         its files are damaged (the message names the ways out)
├── RecordFormatError         bytes that are not a versioned-vector record
├── NoServingVersionError     no serving version has been set yet
├── EntityNotFoundError       a lookup's id has no vector at all
├── VersionNotFoundError      the id exists but holds no vector of the version asked
├── VersionUnreachableError   no aligner chain leads from the serving version to it
├── InvalidArgumentError      a request's argument is out of range (``argument`` names it)
└── IndexUnavailableError     a version's item index cannot answer
    ├── IndexMissingError         the version keeps no item index
    └── IndexBuildingError        it is still being built from the store
"""

from __future__ import annotations

__all__ = [
    "EntityNotFoundError",
    "IndexBuildingError",
    "IndexMissingError",
    "IndexUnavailableError",
    "InvalidArgumentError",
    "NoServingVersionError",
    "RecordFormatError",
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


class RecordFormatError(StoreError, ValueError):
    """Bytes that are not a versioned-vector record (or an entry of one)."""


class EntityNotFoundError(StoreError):
    """A lookup's id has no vector at all."""


class InvalidArgumentError(StoreError, ValueError):
    """A request's argument is out of range; ``argument`` names it (``k``, say)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


class IndexUnavailableError(StoreError):
    """A version's item index cannot answer."""


class IndexMissingError(IndexUnavailableError):
    """The version keeps no item index (``EMBSTREAM_INDEX_VERSIONS`` bounds how many do)."""


class IndexBuildingError(IndexUnavailableError):
    """The version's item index is still being built from the store."""
