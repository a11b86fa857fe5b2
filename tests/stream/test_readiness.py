"""``/readyz`` and ``/healthz`` above the worker: which part holds readiness back, that the
item index counts at start only, and that probes answer HEAD as well as GET."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from store.vector_store import VersionedVectorStore
from stream.api.app import ApiContext, create_app
from stream.api.status import readiness
from stream.metrics import Metrics


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VersionedVectorStore]:
    opened = VersionedVectorStore(tmp_path / "db")
    opened.set_serving_version(2)
    yield opened
    opened.close()


class _Indexes:
    """Item indexes whose build of each version is said by ``building``."""

    def __init__(self) -> None:
        self.building = {2: True}

    def status(self) -> dict[int, Any]:
        return {version: SimpleNamespace(building=flag) for version, flag in self.building.items()}


def _context(store: VersionedVectorStore) -> ApiContext:
    context = ApiContext(store=store, metrics=Metrics(), registry=None, health=dict)  # type: ignore[arg-type]
    context.controller = SimpleNamespace(  # type: ignore[assignment]
        serving_encoder=SimpleNamespace(version=2), describe=lambda: None
    )
    return context


def test_the_serving_index_holds_readiness_back_at_start_only(store: VersionedVectorStore) -> None:
    context = _context(store)
    assert readiness(context) == (True, "serving")  # indexes off, no consumer part
    indexes = _Indexes()
    context.item_indexes = indexes  # type: ignore[assignment]
    assert readiness(context) == (False, "starting: building the item index of version 2")
    indexes.building[2] = False
    assert readiness(context) == (True, "serving")
    store.set_serving_version(3)  # a swap: version 3's index builds on every worker at once
    indexes.building[3] = True
    assert readiness(context) == (True, "serving")  # lookups stay in the load balancers


def test_the_consumer_part_comes_before_the_index(store: VersionedVectorStore) -> None:
    context = _context(store)
    context.item_indexes = _Indexes()  # type: ignore[assignment]
    context.readiness = lambda: (False, "starting: joining the consumer group")
    assert readiness(context) == (False, "starting: joining the consumer group")
    context.controller = None
    assert readiness(context) == (False, "starting: loading the serving encoder")


def test_probes_and_reads_answer_head(store: VersionedVectorStore) -> None:
    context = _context(store)

    async def heads() -> dict[str, int]:
        async with TestClient(TestServer(create_app(context))) as client:
            return {
                path: (await client.head(path)).status for path in ("/healthz", "/readyz", "/metrics", "/")
            }

    assert asyncio.run(heads()) == {"/healthz": 200, "/readyz": 200, "/metrics": 200, "/": 200}
