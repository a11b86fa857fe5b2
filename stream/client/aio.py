"""The asyncio client: an aiohttp session."""

from __future__ import annotations

import asyncio
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

__all__ = ["AsyncClient"]


class AsyncClient(ClientBase):
    """:class:`Client`'s calls, awaited: an aiohttp session, opened on first use
    (``await client.close()``, or ``async with AsyncClient(...) as client``)."""

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
        self._session: Any = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, kind: Kind, entity_id: str, version: int | None = None) -> Embedding:
        return await self._run(get_steps(kind, entity_id, version))  # type: ignore[no-any-return]

    async def get_many(self, kind: Kind, ids: Sequence[str], version: int | None = None) -> Embeddings:
        return await self._run(get_many_steps(kind, ids, version))  # type: ignore[no-any-return]

    async def recommend(
        self,
        user_id: str,
        k: int | None = None,
        version: int | None = None,
        *,
        exclude_seen: bool = True,
        fallback: Fallback = "popular",
    ) -> Recommendation:
        return await self._run(recommend_steps(user_id, k, version, exclude_seen, fallback))  # type: ignore[no-any-return]

    async def recommend_many(
        self,
        user_ids: Sequence[str],
        k: int | None = None,
        version: int | None = None,
        *,
        exclude_seen: bool = True,
        fallback: Fallback = "popular",
    ) -> RecommendationBatch:
        steps = recommend_many_steps(user_ids, k, version, exclude_seen, fallback)
        return await self._run(steps)  # type: ignore[no-any-return]

    async def versions(self) -> dict[str, Any]:
        return await self._run(document_steps("/v1/versions"))  # type: ignore[no-any-return]

    async def status(self) -> dict[str, Any]:
        return await self._run(document_steps("/v1/status"))  # type: ignore[no-any-return]

    async def backup(self, directory: str, timeout_s: float = 600.0) -> dict[str, Any]:
        return await self._run(backup_steps(directory, timeout_s))  # type: ignore[no-any-return]

    async def _run(self, steps: Steps) -> Any:
        try:
            call = next(steps)
            while True:
                call = steps.send(await self._send(call))
        except StopIteration as done:
            return done.value

    async def _send(self, call: Call) -> bytes:
        import aiohttp  # here: the blocking client does not need it

        if self._session is None:
            self._session = aiohttp.ClientSession()
        attempt = Attempts(self, call)
        timeout = aiohttp.ClientTimeout(total=call.timeout_s or self.timeout_s)
        url = f"{self.origin}{call.target(self.prefix)}"
        while True:
            try:
                async with self._session.request(
                    call.method, url, data=call.body, headers=call.headers(self.token), timeout=timeout
                ) as response:
                    status, body, reason = response.status, await response.read(), response.reason or ""
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                await asyncio.sleep(attempt.after_failure(error))
                continue
            wait = attempt.after_answer(status, body, reason)
            if wait is None:
                return body  # type: ignore[no-any-return]
            await asyncio.sleep(wait)
