"""The Python client against the real API application on a real store (served on a real
socket, in a thread of its own), and its retry, error and connection rules against small
stand-in servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web

from store.vector_store import VersionedVectorStore
from stream.api.app import ApiContext, create_app
from stream.client import (
    AsyncClient,
    BadRequestError,
    Client,
    ConnectionFailedError,
    IndexBuildingError,
    NotFoundError,
    ServerError,
    UnauthorizedError,
    UnavailableError,
    VersionNotFoundError,
    VersionUnreachableError,
)
from stream.client import calls as client_calls
from stream.kafka.broker import free_port
from stream.metrics import Metrics
from tests.conftest import http_json, serve_app
from tests.stream.test_api_batch_binary import OneAlignerRegistry

DIM = 8
TOKEN = "client-test-token"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VersionedVectorStore]:
    """u0..u29 at versions 1 and 2, n0..n4 at version 2 only, v3 at 3 only; serving 2."""
    opened = VersionedVectorStore(tmp_path / "db")
    both = [f"u{n}" for n in range(30)]
    rng = np.random.default_rng(7)
    writer = opened.writer()
    writer.put_vectors("user", both, 1, rng.standard_normal((30, DIM)).astype(np.float32), 2_000)
    writer.put_vectors("user", both, 2, rng.standard_normal((30, DIM)).astype(np.float32), 2_000)
    writer.put_vectors("user", [f"n{n}" for n in range(5)], 2, rng.standard_normal((5, DIM)), 3_000)
    writer.put_vectors("user", ["v3"], 3, rng.standard_normal((1, DIM)), 1_000)
    writer.commit()
    opened.set_serving_version(2)
    yield opened
    opened.close()


@pytest.fixture
def api(store: VersionedVectorStore) -> Iterator[str]:
    registry: Any = OneAlignerRegistry()
    context = ApiContext(store=store, metrics=Metrics(), registry=registry, health=dict, token=TOKEN)
    with serve_app(create_app(context), keepalive_timeout=1.0) as url:
        yield url


def _json_batch(api: str, kind: str, ids: list[str], version: int | None = None) -> dict[str, Any]:
    status, body = http_json(
        "POST", f"{api}/v1/embeddings/{kind}/batch", {"ids": ids, "version": version}, TOKEN
    )
    assert status == 200
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", [None, 2, 1])
def test_reads_equal_the_json_api_at_every_version(api: str, version: int | None) -> None:
    ids = ["u3", "ghost", "n1", "u3", "u0"]
    expected = _json_batch(api, "user", ids, version)
    rows = [row for row in expected["results"] if row is not None]
    with Client(api, token=TOKEN) as client:
        batch = client.get_many("user", ids, version)
        one = client.get("user", "u3", version)
    assert batch.version == expected["version"] == (version or 2)
    assert batch.ids == [row["id"] for row in rows]
    assert batch.missing == ["ghost"]
    assert ("aligned" in batch.sources) == (version == 1)  # n1 has version 2 only: carried back
    assert batch.vectors.dtype == np.float32 and batch.vectors.shape == (len(rows), DIM)
    assert np.array_equal(batch.vectors, np.array([row["vector"] for row in rows], dtype=np.float32))
    assert batch.sources == [row["source"] for row in rows]
    assert batch.updated_at == [row["updated_at"] for row in rows]
    status, single = http_json(
        "GET", f"{api}/v1/embeddings/user/u3" + (f"?version={version}" if version else ""), token=TOKEN
    )
    assert status == 200 and one.version == single["version"] and one.source == single["source"]
    assert np.array_equal(one.vector, np.asarray(single["vector"], dtype=np.float32))
    assert np.array_equal(batch.as_dict()["u3"], one.vector)


def test_the_async_client_reads_what_the_blocking_one_reads(api: str) -> None:
    ids = [f"u{n}" for n in range(30)] + ["n4", "ghost"]

    async def read() -> Any:
        async with AsyncClient(api, token=TOKEN) as client:
            return (
                await client.get_many("user", ids, 1),
                await client.get("user", "n4"),
                await client.versions(),
            )

    batch, one, versions = asyncio.run(read())
    with Client(api, token=TOKEN) as client:
        expected = client.get_many("user", ids, 1)
        assert np.array_equal(client.get("user", "n4").vector, one.vector) and one.source == "native"
        assert client.versions() == versions
    assert (batch.version, batch.ids, batch.missing) == (expected.version, expected.ids, expected.missing)
    assert np.array_equal(batch.vectors, expected.vectors)
    assert versions["serving_version"] == 2


def test_a_long_list_is_split_and_every_part_is_of_the_first_answers_version(
    api: str, store: VersionedVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests of the API's limit each; a version swap between two of them must not mix."""
    ids = [f"u{n}" for n in range(30)] + ["n0", "n1"]
    with Client(api, token=TOKEN) as client:
        whole = client.get_many("user", ids)
    monkeypatch.setattr(client_calls, "BATCH_IDS", 7)
    sent: list[bytes] = []
    client = Client(api, token=TOKEN)
    exchange = client._exchange

    def swapping(call: Any, timeout_s: float) -> Any:
        sent.append(call.body)
        answer = exchange(call, timeout_s)
        store.set_serving_version(1)  # after the first part: later parts must still be version 2
        return answer

    monkeypatch.setattr(client, "_exchange", swapping)
    try:
        split = client.get_many("user", ids)
    finally:
        store.set_serving_version(2)
        client.close()
    assert len(sent) == 5 and all(orjson.loads(body)["version"] == 2 for body in sent[1:])
    assert (split.version, split.ids, split.missing) == (2, whole.ids, whole.missing)
    assert np.array_equal(split.vectors, whole.vectors)


def test_each_error_answer_raises_its_own_error(api: str, store: VersionedVectorStore) -> None:
    with Client(api, token=TOKEN, retries=0) as client:
        with pytest.raises(NotFoundError) as missing:
            client.get("user", "ghost")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        with pytest.raises(VersionNotFoundError):
            client.get("user", "u1", version=7)
        store.set_serving_version(3)
        try:
            with pytest.raises(VersionUnreachableError) as unreachable:
                client.get("user", "v3", version=1)  # no aligner carries version 3 back
        finally:
            store.set_serving_version(2)
        assert (unreachable.value.status, unreachable.value.code) == (409, "version_unreachable")
        with pytest.raises(BadRequestError) as bad:
            client.get("user", "x" * 1000)
        assert bad.value.code == "bad_id"
        with pytest.raises(NotFoundError) as no_index:
            client.recommend("u1")
        assert no_index.value.code == "no_index"
    with Client(api, token="wrong") as client, pytest.raises(UnauthorizedError) as refused:
        client.get("user", "u1")
    assert refused.value.status == 401 and "token" in refused.value.message
    with pytest.raises(ValueError, match="kind"):
        Client(api).get("thing", "u1")  # type: ignore[arg-type]


def _flaky_app(
    failures: int, status: int = 503, code: str = "index_building"
) -> tuple[web.Application, list[float]]:
    """Answers ``status`` ``failures`` times, then a recommendation; records when each came."""
    seen: list[float] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        if len(seen) <= failures:
            return web.json_response({"error": code, "message": "still building"}, status=status)
        user = request.match_info["user"]
        body = {
            "user_id": user,
            "version": 3,
            "user_vector": "native",
            "items": [{"id": "i1", "score": 0.5}],
            "excluded_seen": 0,
            "fallback": None,
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v1/recommendations/{user}", answer)
    return app, seen


def test_a_503_is_retried_with_growing_waits_then_answered() -> None:
    app, seen = _flaky_app(failures=3)
    with serve_app(app) as url, Client(url, retries=4, backoff_s=0.05) as client:
        answer = client.recommend("u1", k=1)
    assert [item.id for item in answer.items] == ["i1"] and answer.version == 3
    waits = np.diff(seen)
    assert len(seen) == 4 and waits[0] >= 0.05 and waits[1] >= 0.1 and waits[2] >= 0.2


def test_retries_are_bounded_and_then_the_503_is_raised() -> None:
    app, seen = _flaky_app(failures=10)
    with (
        serve_app(app) as url,
        Client(url, retries=2, backoff_s=0.01) as client,
        pytest.raises(IndexBuildingError),
    ):
        client.recommend("u1")
    assert len(seen) == 3
    app, seen = _flaky_app(failures=10, code="no_serving_version")

    async def once() -> None:
        async with AsyncClient(url, retries=1, backoff_s=0.01) as client:
            await client.recommend("u1")

    with serve_app(app) as url, pytest.raises(UnavailableError) as raised:
        asyncio.run(once())
    assert raised.value.code == "no_serving_version" and len(seen) == 2


def test_other_errors_are_not_retried() -> None:
    app, seen = _flaky_app(failures=10, status=500, code="boom")
    with serve_app(app) as url, Client(url, retries=3, backoff_s=0.01) as client, pytest.raises(ServerError):
        client.recommend("u1")
    assert len(seen) == 1


def test_a_refused_connection_is_retried_then_raised() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectionFailedError, match=r"127\.0\.0\.1"):
        Client(url, retries=2, backoff_s=0.1).versions()
    assert time.monotonic() - started >= 0.3  # two waits: 0.1 and 0.2 s

    async def once() -> None:
        async with AsyncClient(url, retries=0) as client:
            await client.versions()

    with pytest.raises(ConnectionFailedError):
        asyncio.run(once())


def test_a_kept_alive_connection_the_server_closed_is_reopened(api: str) -> None:
    with Client(api, token=TOKEN, retries=0) as client:
        first = client.get("user", "u1")
        assert client._connection is not None
        time.sleep(1.5)  # past the server's keep-alive timeout: it closes the connection
        again = client.get("user", "u1")
    assert np.array_equal(first.vector, again.vector)


def test_base_urls() -> None:
    assert Client("localhost:9000").base_url == "http://localhost:9000"
    assert Client("https://api.example/embstream/").base_url == "https://api.example:443/embstream"
    with pytest.raises(ValueError, match="http"):
        Client("ftp://host")
    with pytest.raises(ValueError):
        Client("http://host", retries=-1)


def test_a_backup_is_sent_once_even_when_its_connection_fails() -> None:
    """A call that may change something is never sent twice: not on a kept-alive connection
    the server may have closed, not after the server dropped it mid-answer."""
    seen: list[str] = []

    async def versions(request: web.Request) -> web.Response:
        seen.append("versions")
        return web.json_response({"serving_version": 1})

    async def backup(request: web.Request) -> web.Response:
        seen.append("backup")
        assert request.transport is not None
        request.transport.close()  # the worker went away mid-answer
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/versions", versions)
    app.router.add_post("/v1/admin/backup", backup)
    with serve_app(app) as url, Client(url, retries=3, backoff_s=0.01) as client:
        client.versions()
        assert client._connection is not None  # kept alive
        with pytest.raises(ConnectionFailedError):
            client.backup("copy")
    assert seen == ["versions", "backup"]


def test_a_split_recommendation_batch_is_of_the_first_answers_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bodies: list[dict[str, Any]] = []

    async def batch(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        version = body["version"] or 3  # the serving version, unless pinned
        results = [
            None
            if user.startswith("none")
            else {
                "user_id": user,
                "version": version,
                "user_vector": "native",
                "items": [],
                "excluded_seen": 0,
            }
            for user in body["user_ids"]
        ]
        return web.json_response({"version": version, "results": results})

    app = web.Application()
    app.router.add_post("/v1/recommendations/batch", batch)
    monkeypatch.setattr(client_calls, "BATCH_USERS", 2)
    users = ["a", "b", "none-c", "d", "e"]
    with serve_app(app) as url, Client(url) as client:
        answer = client.recommend_many(users, k=4)
    assert [body["user_ids"] for body in bodies] == [["a", "b"], ["none-c", "d"], ["e"]]
    assert [body["version"] for body in bodies] == [None, 3, 3] and all(body["k"] == 4 for body in bodies)
    assert answer.version == 3 and [r and r.user_id for r in answer.results] == ["a", "b", None, "d", "e"]


def test_ids_beyond_the_body_limit_are_split_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = ["é" * 200 + str(n) for n in range(60)]  # about 400 bytes of JSON each
    monkeypatch.setattr(client_calls, "BODY_BUDGET", 5_000)
    chunks = list(client_calls._chunks(ids, 1_000))
    assert [entity_id for chunk in chunks for entity_id in chunk] == ids
    assert all(len(orjson.dumps(list(chunk))) <= 5_000 for chunk in chunks) and len(chunks) > 1
    assert list(client_calls._chunks([], 10)) == [[]]


def test_the_client_splits_at_the_apis_limits() -> None:
    from store.recommend import MAX_RECOMMENDATION_USERS
    from stream.api.app import MAX_BATCH_IDS, MAX_BODY_BYTES

    assert client_calls.BATCH_IDS == MAX_BATCH_IDS
    assert client_calls.BATCH_USERS == MAX_RECOMMENDATION_USERS
    assert client_calls.BODY_BUDGET < MAX_BODY_BYTES


def test_ipv6_addresses_keep_their_brackets() -> None:
    assert Client("http://[::1]:8080").base_url == "http://[::1]:8080"
    assert AsyncClient("http://[::1]:9000/p").origin == "http://[::1]:9000"
    assert Client("http://[::1]:8080").host == "::1"  # what the socket connects to
