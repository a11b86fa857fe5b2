"""The Python client of a worker's lookup and recommendation API: :class:`Client` (blocking,
one kept-alive connection) and :class:`AsyncClient` (aiohttp, a pooled session).

Both speak the same calls, checked and decoded by the same functions here; only the
transport differs::

    from stream.client import Client

    with Client("http://127.0.0.1:8080", token="...") as api:
        batch = api.get_many("item", ["i1", "i2", "nope"])  # binary format underneath
        batch.version, batch.vectors.shape, batch.ids, batch.missing  # 3, (2, 64), [...], ["nope"]
        api.recommend("u1", k=5).items  # [RecommendedItem(id="i7", score=0.91), ...]

Every answer is of one version; ``get_many`` and ``recommend_many`` split a long list into
requests of the API's limits and pin the later ones to the version the first answered, so a
split batch is still of one version. A 503 (an index still building, no serving version yet)
and a connection that fails are retried ``retries`` times with exponential backoff; then, as
every other error answer, they raise a :class:`ClientError` naming the API's status and
``code``. Importing this module needs numpy, orjson and (for :class:`AsyncClient`) aiohttp,
not torch.
"""

from __future__ import annotations

from stream.client.aio import AsyncClient
from stream.client.answers import (
    BadAnswerError,
    BadRequestError,
    ClientError,
    ConnectionFailedError,
    Embedding,
    Embeddings,
    ForbiddenError,
    IndexBuildingError,
    NotFoundError,
    Recommendation,
    RecommendationBatch,
    RecommendedItem,
    ResponseError,
    ServerError,
    UnauthorizedError,
    UnavailableError,
    VersionNotFoundError,
    VersionUnreachableError,
)
from stream.client.blocking import Client

__all__ = [
    "AsyncClient",
    "BadAnswerError",
    "BadRequestError",
    "Client",
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
]
