"""The API's server against slow, abandoned and greedy clients, and its strict inputs: real
sockets against the real app on a real RocksDB store (no worker, no broker)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from models.registry import EncoderRegistry
from store.vector_store import VersionedVectorStore
from stream.api.app import ApiContext, create_app
from stream.api.server import HttpLimits, HttpServer
from stream.kafka.broker import free_port
from stream.metrics import Metrics

LIMITS = HttpLimits(header_timeout_s=0.6, body_timeout_s=0.6, max_connections=40)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VersionedVectorStore]:
    opened = VersionedVectorStore(tmp_path / "db")
    writer = opened.writer()
    writer.put_vectors("user", ["u1", "u2"], 1, np.ones((2, 4), np.float32), 1_000)
    writer.commit()
    opened.set_serving_version(1)
    yield opened
    opened.close()


def _serve(store: VersionedVectorStore, scenario: Callable[[int, HttpServer], Awaitable[Any]]) -> Any:
    """Run ``scenario(port, server)`` against the app served within :data:`LIMITS`."""

    async def run() -> Any:
        registry = EncoderRegistry(store.path.parent / "registry")  # empty: nothing to carry
        context = ApiContext(
            store=store,
            metrics=Metrics(),
            registry=registry,
            health=dict,
            body_timeout_s=LIMITS.body_timeout_s,
        )
        port = free_port()
        server = HttpServer(create_app(context), "127.0.0.1", port, LIMITS)
        await server.start()
        try:
            return await scenario(port, server)
        finally:
            await server.stop()

    return asyncio.run(run())


async def _request(port: int, raw: bytes) -> tuple[int, dict[str, Any] | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body) if body.startswith(b"{") else None


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()


def test_connections_whose_headers_never_finish_are_dropped_and_the_api_keeps_answering(
    store: VersionedVectorStore,
) -> None:
    async def scenario(port: int, server: HttpServer) -> tuple[list[bytes], int, int, float]:
        slow = []
        for _ in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/embeddings/user/u1 HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # never ends
            slow.append((reader, writer))
        await asyncio.sleep(0.1)
        held = server.connections
        status, _ = await _request(port, _get("/v1/embeddings/user/u1"))  # others still answered
        started = time.monotonic()
        closed = [await asyncio.wait_for(reader.read(), 5) for reader, _ in slow]
        waited = time.monotonic() - started
        for _, writer in slow:
            writer.close()
        await asyncio.sleep(0.1)
        return closed, held, status, waited + server.connections

    closed, held, status, rest = _serve(store, scenario)
    assert held >= 30 and status == 200
    assert closed == [b""] * 30  # each was closed by the server, unanswered
    assert rest < 2.0  # within about the header timeout, and no connection left open


def test_a_connection_beyond_the_bound_is_refused_with_503_and_slots_come_back(
    store: VersionedVectorStore,
) -> None:
    async def scenario(port: int, server: HttpServer) -> tuple[int, dict[str, Any] | None, int, int]:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
        await asyncio.sleep(0.1)
        refused = await _request(port, _get("/healthz"))
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.2)
        after, _ = await _request(port, _get("/healthz"))
        return refused[0], refused[1], after, server.refused_connections

    status, body, after, refused = _serve(store, scenario)
    assert status == 503 and body is not None and body["error"] == "too_many_connections"
    assert refused >= 1 and after == 200


def test_a_body_that_never_arrives_is_a_408_and_the_connection_closes(store: VersionedVectorStore) -> None:
    async def scenario(port: int, server: HttpServer) -> tuple[int, dict[str, Any] | None, float]:
        started = time.monotonic()
        raw = (
            b"POST /v1/embeddings/user/batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"ids": ['
        )
        status, body = await _request(port, raw)
        return status, body, time.monotonic() - started

    status, body, seconds = _serve(store, scenario)
    assert status == 408 and body is not None and body["error"] == "body_timeout"
    assert seconds < 3.0


def test_a_client_leaving_mid_request_is_one_debug_line_not_an_error(
    store: VersionedVectorStore, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(port: int, server: HttpServer) -> None:
        for _ in range(5):
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(
                b'POST /v1/embeddings/user/batch HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n{"ids"'
            )
            connection.close()
        await asyncio.sleep(0.3)

    with caplog.at_level(logging.DEBUG):
        _serve(store, scenario)
    errors = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert errors == []
    assert any("went away" in record.getMessage() for record in caplog.records)
    assert not any(record.exc_info for record in caplog.records if record.name.startswith("aiohttp"))


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (_get("/v1/embeddings/user/u1?version=%D9%A1"), "bad_version"),  # Arabic-Indic digit one
        (_get("/v1/embeddings/user/u1?version=%C2%B9"), "bad_version"),  # superscript one
        (_get("/v1/embeddings/user/u1?version=1.0"), "bad_version"),
        (_get("/v1/embeddings/user/u1?version=+1"), "bad_version"),
        (_get("/v1/embeddings/user/u1?version=1&version=2"), "bad_version"),
        (_get("/v1/embeddings/user/u1?version=1&version=1"), "bad_version"),
        (_get("/v1/recommendations/u1?k=%D9%A3"), "bad_k"),
        (_get("/v1/recommendations/u1?k=3&k=4"), "bad_k"),
    ],
)
def test_versions_are_ascii_digits_and_a_repeated_parameter_is_a_400(
    store: VersionedVectorStore, raw: bytes, code: str
) -> None:
    async def scenario(port: int, server: HttpServer) -> tuple[int, dict[str, Any] | None]:
        return await _request(port, raw)

    status, body = _serve(store, scenario)
    assert status == 400 and body is not None and body["error"] == code


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"ids": ["u1"], "version": 1.0}', "bad_version"),
        (b'{"ids": ["u1"], "version": "1"}', "bad_version"),
        (b'{"ids": ["u1"], "version": true}', "bad_version"),
    ],
)
def test_versions_in_a_body_are_json_integers(store: VersionedVectorStore, payload: bytes, code: str) -> None:
    raw = (
        b"POST /v1/embeddings/user/batch HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )

    async def scenario(port: int, server: HttpServer) -> tuple[int, dict[str, Any] | None]:
        return await _request(port, raw)

    status, body = _serve(store, scenario)
    assert status == 400 and body is not None and body["error"] == code


def test_a_plain_version_still_reads(store: VersionedVectorStore) -> None:
    async def scenario(port: int, server: HttpServer) -> tuple[int, dict[str, Any] | None]:
        return await _request(port, _get("/v1/embeddings/user/u1?version=1"))

    status, body = _serve(store, scenario)
    assert status == 200 and body is not None and body["version"] == 1
