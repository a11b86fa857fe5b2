"""The blocking client: one kept-alive ``http.client`` connection."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Sequence
from typing import Any

from stream.client.answers import Embedding, Embeddings, Recommendation, RecommendationBatch
from stream.client.calls import (
    Attempts,
    Call,
    ClientBase,
    Fallback,
    Kind,
    Steps,
    backup_steps,
    document_steps,
    get_many_steps,
    get_steps,
    recommend_many_steps,
    recommend_steps,
)

__all__ = ["Client"]


class Client(ClientBase):
    """A blocking client with one kept-alive connection (calls from several threads take
    turns; make one client per thread to run them side by side).

    ``token``: sent as ``Authorization: Bearer``; ``timeout_s``: per request;
    ``retries``/``backoff_s``: how often, and after how long (doubling), a 503 or a failed
    connection is tried again before raising.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        token: str = "",
        timeout_s: float = 10.0,
        retries: int = 4,
        backoff_s: float = 0.25,
    ) -> None:
        super().__init__(base_url, token, timeout_s, retries, backoff_s)
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def get(self, kind: Kind, entity_id: str, version: int | None = None) -> Embedding:
        """One vector (``NotFoundError`` when the id has none at that version)."""
        return self._run(get_steps(kind, entity_id, version))  # type: ignore[no-any-return]

    def get_many(self, kind: Kind, ids: Sequence[str], version: int | None = None) -> Embeddings:
        """Vectors of ``ids``, all of one version (the serving one by default)."""
        return self._run(get_many_steps(kind, ids, version))  # type: ignore[no-any-return]

    def recommend(
        self,
        user_id: str,
        k: int | None = None,
        version: int | None = None,
        *,
        exclude_seen: bool = True,
        fallback: Fallback = "popular",
    ) -> Recommendation:
        """The top ``k`` items for a user (default: the API's, 10); ``NotFoundError`` with
        ``fallback="none"`` for a user with no vector."""
        return self._run(recommend_steps(user_id, k, version, exclude_seen, fallback))  # type: ignore[no-any-return]

    def recommend_many(
        self,
        user_ids: Sequence[str],
        k: int | None = None,
        version: int | None = None,
        *,
        exclude_seen: bool = True,
        fallback: Fallback = "popular",
    ) -> RecommendationBatch:
        """The top ``k`` items of each user, all of one version."""
        return self._run(recommend_many_steps(user_ids, k, version, exclude_seen, fallback))  # type: ignore[no-any-return]

    def versions(self) -> dict[str, Any]:
        """``GET /v1/versions``: serving, active and registry versions, rollout, store counts."""
        return self._run(document_steps("/v1/versions"))  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: what the status page shows."""
        return self._run(document_steps("/v1/status"))  # type: ignore[no-any-return]

    def backup(self, directory: str, timeout_s: float = 600.0) -> dict[str, Any]:
        """``POST /v1/admin/backup``: the worker writes a consistent copy of its store into
        ``directory`` (inside its backup directory). Never retried: a retry could find the
        copy half written."""
        return self._run(backup_steps(directory, timeout_s))  # type: ignore[no-any-return]

    def _run(self, steps: Steps) -> Any:
        try:
            call = next(steps)
            while True:
                call = steps.send(self._send(call))
        except StopIteration as done:
            return done.value

    def _send(self, call: Call) -> bytes:
        attempt = Attempts(self, call)
        while True:
            try:
                status, body, reason = self._exchange(call, call.timeout_s or self.timeout_s)
            except (OSError, http.client.HTTPException) as error:
                time.sleep(attempt.after_failure(error))
                continue
            wait = attempt.after_answer(status, body, reason)
            if wait is None:
                return body
            time.sleep(wait)

    def _exchange(self, call: Call, timeout_s: float) -> tuple[int, bytes, str]:
        with self._lock:
            if not call.retry and self._connection is not None:  # sent once: never on a stale one
                self._connection.close()
                self._connection = None
            reused = self._connection is not None
            while True:
                connection = self._connection or self._connect()
                connection.timeout = timeout_s
                if connection.sock is not None:
                    connection.sock.settimeout(timeout_s)
                try:
                    connection.request(
                        call.method, call.target(self.prefix), call.body, call.headers(self.token)
                    )
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as error:
                    connection.close()
                    self._connection = None
                    if reused and not isinstance(error, TimeoutError):  # the server closed the
                        reused = False  # kept-alive connection meanwhile: send it once more
                        continue
                    raise
                self._connection = None if response.will_close else connection
                if response.will_close:
                    connection.close()
                return response.status, body, response.reason

    def _connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
