"""HTTP answers other than 200: the one place that gives errors their status and code.

Routes raise :class:`ApiError` for what they check themselves; errors of the store and the
registry are mapped by :func:`api_error` (the packages below the API know nothing of HTTP).
"""

from __future__ import annotations

from models.errors import IncompatibleVersionsError, VersionMissingError
from store.errors import (
    EntityNotFoundError,
    IndexBuildingError,
    IndexMissingError,
    InvalidArgumentError,
    NoServingVersionError,
    StoreDamagedError,
    VersionNotFoundError,
    VersionUnreachableError,
)
from stream.errors import StreamError

__all__ = ["ApiError", "api_error"]


class ApiError(StreamError):
    """An answer other than 200: ``status``, ``code`` (the JSON ``error``) and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


#: (error class, status, code), the first match wins.
_MAPPED: tuple[tuple[type[Exception], int, str], ...] = (
    (EntityNotFoundError, 404, "not_found"),
    (VersionNotFoundError, 404, "version_not_found"),
    (VersionUnreachableError, 409, "version_unreachable"),
    (IncompatibleVersionsError, 409, "version_unreachable"),
    (VersionMissingError, 409, "version_unreachable"),
    (NoServingVersionError, 503, "no_serving_version"),
    (StoreDamagedError, 503, "store_damaged"),
    (IndexBuildingError, 503, "index_building"),
    (IndexMissingError, 404, "no_index"),
)


def api_error(error: Exception) -> ApiError | None:
    """The answer for an error of the store or the registry, or ``None`` (not the client's
    to hear: a 500)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, InvalidArgumentError):
        return ApiError(400, f"bad_{error.argument}", str(error))
    for kind, status, code in _MAPPED:
        if isinstance(error, kind):
            return ApiError(status, code, str(error))
    return None
