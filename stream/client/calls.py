"""The calls of both clients, written once and free of I/O: each call is a generator that
yields the requests (:class:`Call`) it needs, is sent each answer's body, and returns what the
client returns. :class:`stream.client.Client` drives them with a blocking connection,
:class:`stream.client.AsyncClient` with aiohttp."""

from __future__ import annotations

import urllib.parse
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from stream.api.vector_format import VECTORS_MEDIA_TYPE
from stream.client.answers import (
    BadAnswerError,
    ConnectionFailedError,
    Embeddings,
    Recommendation,
    RecommendationBatch,
    joined,
    read_embedding,
    read_embeddings,
    read_json,
    read_recommendation,
    response_error,
)

__all__ = [
    "BATCH_IDS",
    "BATCH_USERS",
    "BODY_BUDGET",
    "Attempts",
    "Call",
    "ClientBase",
    "Fallback",
    "Kind",
    "Steps",
    "backup_steps",
    "document_steps",
    "get_many_steps",
    "get_steps",
    "recommend_many_steps",
    "recommend_steps",
]

#: The API's limits per request (``MAX_BATCH_IDS``, ``MAX_RECOMMENDATION_USERS``): longer
#: lists are split into requests of this many.
BATCH_IDS = 10_000
BATCH_USERS = 1_000
Kind = Literal["user", "item"]
Fallback = Literal["popular", "none"]


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # quoted, below the base URL
    query: dict[str, str]
    body: bytes | None = None
    binary: bool = False  # ask for the binary vectors format
    retry: bool = True  # only calls that change nothing are retried
    timeout_s: float | None = None  # the client's, unless the call needs longer

    def target(self, prefix: str) -> str:
        return prefix + self.path + (f"?{urllib.parse.urlencode(self.query)}" if self.query else "")

    def headers(self, token: str) -> dict[str, str]:
        headers = {"Accept": VECTORS_MEDIA_TYPE if self.binary else "application/json"}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers


def _quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _query(**given: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in given.items():
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif value is not None:
            out[name] = str(value)
    return out


def _check_kind(kind: str) -> str:
    if kind not in ("user", "item"):
        raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
    return kind


def _one_call(kind: str, entity_id: str, version: int | None) -> Call:
    path = f"/v1/embeddings/{_check_kind(kind)}/{_quoted(entity_id)}"
    return Call("GET", path, _query(version=version))


def _batch_call(kind: str, ids: Sequence[str], version: int | None) -> Call:
    body = orjson.dumps({"ids": list(ids), "version": version})
    return Call("POST", f"/v1/embeddings/{_check_kind(kind)}/batch", {}, body, binary=True)


def _recommend_call(
    user_id: str, k: int | None, version: int | None, exclude_seen: bool, fallback: str
) -> Call:
    query = _query(k=k, version=version, exclude_seen=exclude_seen, fallback=fallback)
    return Call("GET", f"/v1/recommendations/{_quoted(user_id)}", query)


def _recommend_batch_call(
    user_ids: Sequence[str], k: int | None, version: int | None, exclude_seen: bool, fallback: str
) -> Call:
    body: dict[str, object] = {"user_ids": list(user_ids), "version": version}
    body.update(exclude_seen=exclude_seen, fallback=fallback)
    if k is not None:
        body["k"] = k
    return Call("POST", "/v1/recommendations/batch", {}, orjson.dumps(body))


#: A split request's body stays below this (the API refuses bodies over 4 MiB).
BODY_BUDGET = 3 << 20


def _chunks(values: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """``values`` in requests of at most ``size`` ids and :data:`BODY_BUDGET` bytes of JSON
    (one empty request for no ids)."""
    if sum(map(len, values)) * 6 + 4 * len(values) < BODY_BUDGET:  # escaped, each char is <= 6 bytes
        for start in range(0, max(len(values), 1), size):
            yield values[start : start + size]
        return
    start, used = 0, 0
    for end, value in enumerate(values):
        cost = len(orjson.dumps(value)) + 1
        if end > start and (end - start >= size or used + cost > BODY_BUDGET):
            yield values[start:end]
            start, used = end, 0
        used += cost
    yield values[start:]


def _delays(retries: int, backoff_s: float, cap_s: float = 5.0) -> Iterator[float]:
    """The waits before each retry: ``backoff_s``, doubling, at most ``cap_s``."""
    for attempt in range(retries):
        yield min(cap_s, backoff_s * (2**attempt))


def _split_base(base_url: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and path prefix of ``http[s]://host[:port][/prefix]``."""
    parsed = urllib.parse.urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"the API's URL must be http[s]://host[:port], got {base_url!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, parsed.hostname, port, parsed.path.rstrip("/")


class ClientBase:
    """What both clients share: their settings and how each call is built and read."""

    def __init__(self, base_url: str, token: str, timeout_s: float, retries: int, backoff_s: float) -> None:
        if retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("retries and backoff_s must be >= 0, timeout_s > 0")
        self.scheme, self.host, self.port, self.prefix = _split_base(base_url)
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        self.origin = f"{self.scheme}://{host}:{self.port}"
        self.base_url = f"{self.origin}{self.prefix}"
        self.token, self.timeout_s, self.retries, self.backoff_s = token, timeout_s, retries, backoff_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


# ----- the calls, written once: each yields the requests it needs and returns the answer -----

Steps = Generator[Call, bytes, Any]


def get_steps(kind: str, entity_id: str, version: int | None) -> Steps:
    return read_embedding(read_json((yield _one_call(kind, entity_id, version))))


def get_many_steps(kind: str, ids: Sequence[str], version: int | None) -> Steps:
    parts: list[Embeddings] = []
    for chunk in _chunks(ids, BATCH_IDS):
        parts.append(read_embeddings((yield _batch_call(kind, chunk, version))))
        version = parts[0].version  # the rest at the version the first answered
    return joined(parts)


def recommend_steps(
    user_id: str, k: int | None, version: int | None, exclude_seen: bool, fallback: str
) -> Steps:
    return read_recommendation(
        read_json((yield _recommend_call(user_id, k, version, exclude_seen, fallback)))
    )


def recommend_many_steps(
    user_ids: Sequence[str], k: int | None, version: int | None, exclude_seen: bool, fallback: str
) -> Steps:
    results: list[Recommendation | None] = []
    for chunk in _chunks(user_ids, BATCH_USERS):
        data = read_json((yield _recommend_batch_call(chunk, k, version, exclude_seen, fallback)))
        try:
            version, entries = int(data["version"]), list(data["results"])
        except (KeyError, TypeError, ValueError) as error:
            raise BadAnswerError(f"not a batch of recommendations: {error!r}") from None
        if len(entries) != len(chunk):
            raise BadAnswerError(f"{len(entries)} recommendations for {len(chunk)} users")
        results.extend(read_recommendation(entry) for entry in entries)  # the rest at this version
    assert version is not None
    return RecommendationBatch(version, results)


def document_steps(path: str) -> Steps:
    return read_json((yield Call("GET", path, {})))


def backup_steps(directory: str, timeout_s: float) -> Steps:
    body = orjson.dumps({"dir": directory})
    return read_json((yield Call("POST", "/v1/admin/backup", {}, body, retry=False, timeout_s=timeout_s)))


class Attempts:
    """How one call goes, whichever transport sends it: what to make of each answer or
    failure, and how long to wait before trying again (never, for a call that may change
    something)."""

    def __init__(self, client: ClientBase, call: Call) -> None:
        self.client, self.call = client, call
        self._waits = _delays(client.retries if call.retry else 0, client.backoff_s)

    def after_answer(self, status: int, body: bytes, reason: str) -> float | None:
        """``None``: ``body`` is the answer (a 200). Else the wait before trying again (a 503,
        while retries remain); any other answer raises its error."""
        if status == 200:
            return None
        wait = next(self._waits, None) if status == 503 else None
        if wait is None:
            raise response_error(status, body, reason)
        return wait

    def after_failure(self, error: BaseException) -> float:
        """The wait before trying again after a failed connection, or
        :class:`ConnectionFailedError` once retries are spent."""
        wait = next(self._waits, None)
        if wait is None:
            text = str(error) or type(error).__name__
            where = f"{self.call.method} {self.client.base_url}{self.call.path}"
            raise ConnectionFailedError(f"{where}: {text}") from None
        return wait
