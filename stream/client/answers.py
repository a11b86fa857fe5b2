"""What the API answers, as the client gives it: vectors, batches and recommendations, and
the error raised for each error answer (one class per status family, the API's ``code`` on it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream.api.vector_format import decode_vectors
from stream.errors import StreamError, VectorsFormatError

__all__ = [
    "BadAnswerError",
    "BadRequestError",
    "ClientError",
    "ConnectionFailedError",
    "Embedding",
    "Embeddings",
    "ForbiddenError",
    "IndexBuildingError",
    "NotFoundError",
    "Recommendation",
    "RecommendationBatch",
    "RecommendedItem",
    "ResponseError",
    "ServerError",
    "UnauthorizedError",
    "UnavailableError",
    "VersionNotFoundError",
    "VersionUnreachableError",
    "joined",
    "read_embedding",
    "read_embeddings",
    "read_json",
    "read_recommendation",
    "response_error",
]


# ----- errors ---------------------------------------------------------------------------------


class ClientError(StreamError):
    """Base of every error the client raises."""


class ConnectionFailedError(ClientError):
    """Nothing answered at the API's address (refused, reset or timed out), after the retries."""


class BadAnswerError(ClientError):
    """The API answered 200 with a body the client cannot read (not the embstream API?)."""


class ResponseError(ClientError):
    """The API answered an error: its HTTP ``status``, the JSON ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class BadRequestError(ResponseError):
    """400, 408, 413: the request was refused (a bad id, version, k, or a body too large)."""


class UnauthorizedError(ResponseError):
    """401 ``unauthorized``: the token is missing or wrong."""


class ForbiddenError(ResponseError):
    """403: the route is off for this caller (e.g. ``admin_disabled``)."""


class NotFoundError(ResponseError):
    """404 ``not_found`` (the id has nothing to give) or ``no_index`` (indexes are off)."""


class VersionNotFoundError(NotFoundError):
    """404 ``version_not_found``: no such version in the store."""


class VersionUnreachableError(ResponseError):
    """409 ``version_unreachable``: no aligner chain between the stored and asked versions."""


class UnavailableError(ResponseError):
    """503 after the retries: ``no_serving_version``, ``store_damaged``, ``index_building``."""


class IndexBuildingError(UnavailableError):
    """503 ``index_building``: the item index of the version asked for is still being built,
    or the worker is starting and has not set its indexes up yet."""


class ServerError(ResponseError):
    """Any other answer (a 500: the worker's log says why)."""


_BY_CODE: dict[str, type[ResponseError]] = {
    "unauthorized": UnauthorizedError,
    "version_not_found": VersionNotFoundError,
    "version_unreachable": VersionUnreachableError,
    "index_building": IndexBuildingError,
}
_BY_STATUS: dict[int, type[ResponseError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    408: BadRequestError,
    409: VersionUnreachableError,
    413: BadRequestError,
    503: UnavailableError,
}


def response_error(status: int, body: bytes, reason: str = "") -> ResponseError:
    """The error for an answer of ``status`` whose body is the API's ``{"error", "message"}``
    (or anything else: a proxy's page)."""
    try:
        parsed = orjson.loads(body)
        code, message = str(parsed["error"]), str(parsed.get("message", ""))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code, message = f"http_{status}", body[:200].decode(errors="replace") or reason
    kind = _BY_CODE.get(code) or _BY_STATUS.get(status, ServerError)
    return kind(status, code, message)


# ----- answers --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # equal only to itself: the vectors are arrays
class Embedding:
    """One vector: ``source`` is ``native``, ``forward`` or ``aligned`` (see the README)."""

    kind: str
    id: str
    version: int
    vector: np.ndarray  # float32 [dim]
    updated_at: int  # epoch milliseconds of the write
    source: str


@dataclass(frozen=True, eq=False)
class Embeddings:
    """A batch of one version: row ``r`` of ``vectors`` is ``ids[r]`` (found ids, in request
    order); ``missing`` are the ids with nothing to give."""

    kind: str
    version: int
    ids: list[str]
    vectors: np.ndarray  # float32 [len(ids), dim]
    missing: list[str]
    updated_at: list[int]
    sources: list[str]

    def as_dict(self) -> dict[str, np.ndarray]:
        """Each found id's row (the last one, for an id asked twice)."""
        return dict(zip(self.ids, self.vectors, strict=True))


@dataclass(frozen=True)
class RecommendedItem:
    id: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    """The top items for a user, best first, all of ``version``."""

    user_id: str
    version: int
    user_vector: str  # native, forward, aligned, or none (the popular fallback)
    items: list[RecommendedItem]
    excluded_seen: int
    fallback: str | None  # "popular" when the user had no vector


@dataclass(frozen=True)
class RecommendationBatch:
    """One entry per user asked, in order (``None``: no vector, with ``fallback="none"``)."""

    version: int
    results: list[Recommendation | None]


# ----- reading answers ------------------------------------------------------------------------


def read_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadAnswerError(f"the answer is not JSON: {error}") from None


def read_embedding(data: dict[str, Any]) -> Embedding:
    try:
        return Embedding(
            kind=data["kind"],
            id=data["id"],
            version=int(data["version"]),
            vector=np.asarray(data["vector"], dtype=np.float32),
            updated_at=int(data["updated_at"]),
            source=data["source"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BadAnswerError(f"not an embedding: {error!r}") from None


def read_embeddings(body: bytes) -> Embeddings:
    try:
        header, matrix = decode_vectors(body)
        return Embeddings(
            kind=header["kind"],
            version=int(header["version"]),
            ids=list(header["ids"]),
            vectors=matrix,
            missing=list(header["missing"]),
            updated_at=list(header["updated_at"]),
            sources=list(header.get("source") or ["native"] * len(header["ids"])),
        )
    except (VectorsFormatError, KeyError, TypeError, ValueError) as error:
        raise BadAnswerError(f"not a batch of vectors: {error}") from None


def read_recommendation(data: dict[str, Any] | None) -> Recommendation | None:
    if data is None:
        return None
    try:
        return Recommendation(
            user_id=data["user_id"],
            version=int(data["version"]),
            items=[RecommendedItem(item["id"], float(item["score"])) for item in data["items"]],
            user_vector=data["user_vector"],
            excluded_seen=int(data["excluded_seen"]),
            fallback=data.get("fallback"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BadAnswerError(f"not a recommendation: {error!r}") from None


def joined(parts: list[Embeddings]) -> Embeddings:
    """One batch of the answers to a split request (all of the first answer's version)."""
    if len(parts) == 1:
        return parts[0]
    rows = [part.vectors for part in parts if len(part.ids)]
    return Embeddings(
        kind=parts[0].kind,
        version=parts[0].version,
        ids=[entity_id for part in parts for entity_id in part.ids],
        vectors=np.concatenate(rows) if rows else parts[0].vectors,
        missing=[entity_id for part in parts for entity_id in part.missing],
        updated_at=[stamp for part in parts for stamp in part.updated_at],
        sources=[source for part in parts for source in part.sources],
    )
