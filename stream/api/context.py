"""What every route reads: the application's context, and how JSON answers are written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from models.registry import EncoderRegistry
from store.item_indexes import ItemIndexes
from store.popular import PopularItems
from store.vector_store import VersionedVectorStore
from stream.metrics import Metrics
from stream.rollout.controller import RolloutController

__all__ = ["CONTEXT_KEY", "JSON_HEADERS", "ApiContext", "context_of", "json_response"]


@dataclass
class ApiContext:
    store: VersionedVectorStore
    metrics: Metrics
    registry: EncoderRegistry
    health: Callable[[], dict[str, Any]]
    controller: RolloutController | None = None
    #: Whether the consumer applies events, and why not (joining the group, a scale-out
    #: replica replaying): one part of ``GET /readyz`` (:func:`stream.api.status.readiness`).
    readiness: Callable[[], tuple[bool, str]] | None = None
    #: When set, every route but ``/healthz`` needs ``Authorization: Bearer <token>``.
    token: str = field(default="", repr=False)
    #: Where ``POST /v1/admin/backup`` may write (``None``: the route is off), and whether
    #: it may be used at all (a token is set, or the API listens on loopback only).
    backup_root: Path | None = None
    admin_allowed: bool = False
    #: The per-version item indexes behind ``/v1/recommendations`` (``None``: off, or not
    #: set up yet while ``indexes_pending``: the routes answer 503 meanwhile, not 404).
    item_indexes: ItemIndexes | None = None
    indexes_pending: bool = False
    #: The serving version's index was built once: readiness no longer waits for one.
    indexes_were_ready: bool = False
    #: The most popular items, answered to users with no vector (``None``: no fallback).
    popular: PopularItems | None = None
    #: A request body must arrive within this many seconds (else 408 ``body_timeout``).
    body_timeout_s: float = 30.0

    @property
    def active_version(self) -> int | None:
        if self.controller is None or self.controller.serving_encoder is None:
            return None
        return self.controller.serving_encoder.version


CONTEXT_KEY: web.AppKey[ApiContext] = web.AppKey("embstream_context", ApiContext)
JSON_HEADERS = {"Content-Type": "application/json"}


def context_of(request: web.Request) -> ApiContext:
    return request.app[CONTEXT_KEY]


def json_response(data: Any, status: int = 200, headers: dict[str, str] = JSON_HEADERS) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(body=body, status=status, headers=headers)
