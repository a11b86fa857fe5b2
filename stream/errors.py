"""Exceptions of the stream package::

StreamError
├── SettingsError           a setting has a value that cannot be used
│   └── KafkaSecurityError      the Kafka security settings do not fit together
├── BrokerError             the broker cannot be started, reached or trusted
│   └── ReplicaError            a scale-out replica misses changelog batches
├── ControlError            a control command cannot be carried out
├── VectorsFormatError      a body is not in the binary vectors format
├── ApiError                an answer other than 200, with its status and code (stream.api.errors)
└── ClientError             what the Python client raises (stream.client.answers)
    ├── ConnectionFailedError   nothing answered at the API's address, after the retries
    ├── BadAnswerError          a 200 whose body the client cannot read
    └── ResponseError           the API answered an error (status, code, message)
        ├── BadRequestError         400, 408, 413
        ├── UnauthorizedError       401
        ├── ForbiddenError          403
        ├── NotFoundError           404
        │   └── VersionNotFoundError    404 version_not_found
        ├── VersionUnreachableError 409
        ├── UnavailableError        503 after the retries
        │   └── IndexBuildingError      503 index_building
        └── ServerError             any other status

Errors of the store and the registry keep their own bases (``store.errors.StoreError``,
``models.errors.ModelError``); the command line reports all three the same way.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ControlError",
    "KafkaSecurityError",
    "ReplicaError",
    "SettingsError",
    "StreamError",
    "VectorsFormatError",
]


class StreamError(Exception):
    """Base of every error raised by the stream package."""


class SettingsError(StreamError, ValueError):
    """A setting has a value that cannot be used."""


class KafkaSecurityError(SettingsError):
    """The Kafka security settings do not fit together (a missing password, a bad file)."""


class BrokerError(StreamError, RuntimeError):
    """The broker cannot be started, reached or trusted (e.g. its partitions moved)."""


class ReplicaError(BrokerError):
    """A scale-out replica misses changelog batches: seed it from another worker's backup."""


class ControlError(StreamError, ValueError):
    """A control command cannot be carried out."""


class VectorsFormatError(StreamError, ValueError):
    """A body is not in the binary vectors format (``stream.api.vector_format``)."""
