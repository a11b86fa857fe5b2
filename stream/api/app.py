"""The lookup API (HTTP, JSON): embeddings by kind and id, versions, health and metrics.

Reads without ``?version`` use the store's serving version, one value for users and items
alike, so a caller never pairs a user vector of one version with item vectors of another.

The batch route also answers in a binary form (:mod:`stream.api.vector_format`: a JSON header,
then one float32 matrix) when asked for it, either by ``?format=binary`` or by an
``Accept`` header listing ``application/x-embstream-vectors`` at a quality no lower than
``application/json``'s. ``?format=json`` forces JSON and wins over ``Accept``; any other
``format`` value is a 400 ``bad_format``. There is no 406: an ``Accept`` naming neither
type gets JSON, as before. Errors are always JSON, whatever was asked for.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from models.aligners import BackwardAligner
from models.errors import IncompatibleVersionsError, VersionMissingError
from models.registry import MAX_VERSION, EncoderRegistry
from store.errors import NoServingVersionError, StoreDamagedError, StoreError, VersionUnreachableError
from store.item_indexes import ItemIndexes
from store.keys import KINDS
from store.lookup import ResolvedMatrix, ResolvedVector, resolve_many, resolve_matrix
from store.vector_store import VersionedVectorStore
from stream.api.openapi import openapi_document
from stream.api.status_page import STATUS_PAGE
from stream.api.vector_format import VECTORS_MEDIA_TYPE, encode_vectors
from stream.ingest.events import MAX_ID_LENGTH
from stream.metrics import Metrics
from stream.rollout.controller import RolloutController

__all__ = [
    "MAX_BATCH_IDS",
    "MAX_VERSION",
    "ApiContext",
    "ApiError",
    "check_id",
    "create_app",
    "json_response",
    "parse_int",
    "parse_version",
    "query_param",
]

log = logging.getLogger("embstream.api")

MAX_BATCH_IDS = 10_000
MAX_BODY_BYTES = 4 << 20


@dataclass
class ApiContext:
    store: VersionedVectorStore
    metrics: Metrics
    registry: EncoderRegistry
    health: Callable[[], dict[str, Any]]
    controller: RolloutController | None = None
    #: ``GET /readyz``: whether this node can answer for every id, and why (None: always).
    readiness: Callable[[], tuple[bool, str]] | None = None
    #: When set, every route but ``/healthz`` needs ``Authorization: Bearer <token>``.
    token: str = field(default="", repr=False)
    #: Where ``POST /v1/admin/backup`` may write (``None``: the route is off), and whether
    #: it may be used at all (a token is set, or the API listens on loopback only).
    backup_root: Path | None = None
    admin_allowed: bool = False
    #: The per-version item indexes behind ``/v1/recommendations`` (``None``: off).
    item_indexes: ItemIndexes | None = None
    #: A request body must arrive within this many seconds (else 408 ``body_timeout``).
    body_timeout_s: float = 30.0
    _chains: dict[tuple[int, int], list[BackwardAligner]] = field(default_factory=dict)

    @property
    def active_version(self) -> int | None:
        if self.controller is None or self.controller.serving_encoder is None:
            return None
        return self.controller.serving_encoder.version

    def carry(self, source: int, target: int) -> Callable[[np.ndarray], np.ndarray]:
        """Rows of ``source``'s space carried back into ``target``'s (chains are cached)."""
        if (source, target) not in self._chains:
            try:
                self._chains[(source, target)] = self.registry.aligner_chain(source, target)
            except (IncompatibleVersionsError, VersionMissingError) as error:
                raise VersionUnreachableError(str(error)) from error
        chain = self._chains[(source, target)]

        def apply(vectors: np.ndarray) -> np.ndarray:
            for aligner in chain:
                vectors = aligner.apply(vectors)
            return vectors

        return apply


CONTEXT_KEY: web.AppKey[ApiContext] = web.AppKey("embstream_context", ApiContext)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_JSON_HEADERS = {"Content-Type": "application/json"}
_BATCH_JSON_HEADERS = {"Content-Type": "application/json", "Vary": "Accept"}
_BATCH_BINARY_HEADERS = {"Content-Type": VECTORS_MEDIA_TYPE, "Vary": "Accept"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] = _JSON_HEADERS) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(body=body, status=status, headers=headers)


def _vectors(resolved: ResolvedMatrix) -> web.Response:
    """A batch in the binary form; per-row ``source`` only when some row is not native."""
    header: dict[str, Any] = {
        "kind": resolved.kind,
        "version": resolved.version,
        "ids": resolved.ids,
        "updated_at": resolved.updated_at_ms,
        "missing": resolved.missing,
    }
    if not resolved.all_native:
        header["source"] = resolved.sources
    return web.Response(body=encode_vectors(header, resolved.vectors), headers=_BATCH_BINARY_HEADERS)


def _vector_json(resolved: ResolvedVector) -> dict[str, Any]:
    return {
        "kind": resolved.kind,
        "id": resolved.id,
        "version": resolved.version,
        "vector": resolved.vector.astype("float32", copy=False),
        "updated_at": resolved.updated_at_ms,
        "source": resolved.source,
    }


def _kind(request: web.Request) -> str:
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise ApiError(400, "bad_kind", f"kind must be one of {', '.join(KINDS)}")
    return kind


def parse_int(raw: Any, code: str, name: str, low: int, high: int, *, in_json: bool = False) -> int:
    """An integer from ``low`` to ``high``: ASCII digits in a query string, a JSON integer in
    a body (``in_json``: not ``1.0``, not ``"1"``, not ``true``); else a 400 ``code``."""
    message = f"{name} must be an integer from {low} to {high}"
    if isinstance(raw, str) and not in_json:
        # str.isdigit() alone would take other scripts' digits ("١") and superscripts.
        if not raw or len(raw) > 12 or not raw.isascii() or not raw.isdigit():
            raise ApiError(400, code, message)
        value = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        raise ApiError(400, code, message)
    if not low <= value <= high:
        raise ApiError(400, code, message)
    return value


def parse_version(raw: Any, *, in_json: bool = False) -> int | None:
    if raw is None:
        return None
    return parse_int(raw, "bad_version", "version", 1, MAX_VERSION, in_json=in_json)


def query_param(request: web.Request, name: str, code: str) -> str | None:
    """The query parameter ``name``, given at most once (a repeated one is a 400 ``code``)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, code, f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def check_id(entity_id: Any) -> str:
    if not isinstance(entity_id, str) or not 1 <= len(entity_id) <= MAX_ID_LENGTH:
        raise ApiError(400, "bad_id", f"ids are strings of 1 to {MAX_ID_LENGTH} characters")
    return entity_id


def _batch_body(raw: bytes) -> tuple[list[str], int | None]:
    """The ids and version of a batch body ``{"ids": [...], "version": V}``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad_body", "the body must be JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
        raise ApiError(400, "bad_body", 'the body must be {"ids": [...], "version": V}')
    if len(body["ids"]) > MAX_BATCH_IDS:
        raise ApiError(400, "too_many_ids", f"at most {MAX_BATCH_IDS} ids per batch")
    return [check_id(entity_id) for entity_id in body["ids"]], parse_version(
        body.get("version"), in_json=True
    )


def _wants_binary(request: web.Request) -> bool:
    """Whether the batch answer is binary: ``?format`` decides, else the ``Accept`` header."""
    chosen = query_param(request, "format", "bad_format")
    if chosen is None:
        return _accept_prefers_binary(request.headers.get("Accept", ""))
    if chosen not in ("json", "binary"):
        raise ApiError(400, "bad_format", 'format must be "json" or "binary"')
    return chosen == "binary"


@lru_cache(maxsize=64)
def _accept_prefers_binary(accept: str) -> bool:
    """True when ``accept`` lists the binary type with a quality >0 and >= JSON's."""
    quality = {VECTORS_MEDIA_TYPE: 0.0, "application/json": 0.0}
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if media.lower() not in quality:
            continue
        value = 1.0
        for param in params:
            name, _, text = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    value = float(text)
                except ValueError:
                    value = 0.0
        quality[media.lower()] = max(quality[media.lower()], value)
    return quality[VECTORS_MEDIA_TYPE] > 0 and quality[VECTORS_MEDIA_TYPE] >= quality["application/json"]


#: Routes answered without a token: liveness probes must not need a secret.
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})  # "/": the status page's HTML, no data in it


def _authorized(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    presented = given.strip().encode("utf-8", "surrogateescape")  # any header bytes: no 500
    return scheme.lower() == "bearer" and hmac.compare_digest(presented, token.encode())


def _unauthorized() -> web.Response:
    body = {"error": "unauthorized", "message": "a valid bearer token is required"}
    response = json_response(body, status=401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="embstream"'
    return response


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    context: ApiContext = request.app[CONTEXT_KEY]
    if context.token and request.path not in _OPEN_PATHS and not _authorized(request, context.token):
        context.metrics.unauthorized += 1
        return _unauthorized()
    try:
        if request.body_exists:  # read within the time allowed; handlers get it from memory
            try:
                await asyncio.wait_for(request.read(), context.body_timeout_s)
            except TimeoutError:
                response = json_response(
                    {
                        "error": "body_timeout",
                        "message": f"the body did not arrive within {context.body_timeout_s} s",
                    },
                    status=408,
                )
                response.force_close()
                return response
        return await handler(request)
    except ConnectionResetError:  # the client went away: nobody to answer
        log.debug("client %s went away during %s %s", request.remote, request.method, request.path)
        return web.Response(status=400)
    except ApiError as error:
        return json_response({"error": error.code, "message": error.message}, status=error.status)
    except VersionUnreachableError as error:
        return json_response({"error": "version_unreachable", "message": str(error)}, status=409)
    except NoServingVersionError as error:
        return json_response({"error": "no_serving_version", "message": str(error)}, status=503)
    except StoreDamagedError as error:
        return json_response({"error": "store_damaged", "message": str(error)}, status=503)
    except web.HTTPRequestEntityTooLarge:
        return json_response(
            {"error": "body_too_large", "message": f"bodies are limited to {MAX_BODY_BYTES} bytes"}, 413
        )


def create_app(context: ApiContext) -> web.Application:
    """The aiohttp application serving ``context``'s store."""
    routes = web.RouteTableDef()

    @routes.get("/v1/embeddings/{kind}/{id}")
    async def get_one(request: web.Request) -> web.Response:
        kind = _kind(request)
        entity_id = check_id(request.match_info["id"])
        version = parse_version(query_param(request, "version", "bad_version"))
        resolved = resolve_many(context.store, kind, [entity_id], version, context.carry)[1][0]
        if resolved is None:
            record = context.store.get_record(kind, entity_id)
            if record is None:
                raise ApiError(404, "not_found", f"unknown {kind} {entity_id!r}")
            held = [entry.version for entry in record]
            wanted = version if version is not None else context.store.serving_version
            raise ApiError(
                404,
                "version_not_found",
                f"{kind} {entity_id!r} has no vector of version {wanted} (held: {held})",
            )
        return json_response(_vector_json(resolved))

    @routes.post("/v1/embeddings/{kind}/batch")
    async def get_batch(request: web.Request) -> web.Response:
        """Many ids of one kind at one version, as JSON (default) or binary (module docstring)."""
        kind = _kind(request)
        binary = _wants_binary(request)
        ids, version = _batch_body(await request.read())
        if binary:
            return _vectors(resolve_matrix(context.store, kind, ids, version, context.carry))
        answered, resolved = resolve_many(context.store, kind, ids, version, context.carry)
        return json_response(
            {
                "kind": kind,
                "version": answered,
                "results": [None if r is None else _vector_json(r) for r in resolved],
            },
            headers=_BATCH_JSON_HEADERS,
        )

    @routes.get("/v1/versions")
    async def versions(request: web.Request) -> web.Response:
        counts = context.store.version_counts()
        return json_response(
            {
                "serving_version": context.store.serving_version,
                "active_encoder_version": context.active_version,
                "registry_versions": context.registry.versions(),
                "rollout": None if context.controller is None else context.controller.describe(),
                "store": {kind: {str(v): n for v, n in per.items()} for kind, per in counts.items()},
            }
        )

    @routes.post("/v1/admin/backup")
    async def backup(request: web.Request) -> web.Response:
        """A consistent copy of the store, written by this worker into ``{"dir": PATH}``: a new
        directory inside its backup directory (``EMBSTREAM_BACKUP_DIR``; a relative PATH is
        taken from there), while it keeps running."""
        if context.backup_root is None or not context.admin_allowed:
            raise ApiError(
                403,
                "admin_disabled",
                "backups through the API need EMBSTREAM_API_TOKEN when the API listens beyond loopback",
            )
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ApiError(400, "bad_body", "the body must be JSON") from None
        raw = body.get("dir") if isinstance(body, dict) else None
        if not isinstance(raw, str) or not raw or "\x00" in raw:
            raise ApiError(
                400, "bad_body", 'the body must be {"dir": "name or path in the backup directory"}'
            )
        root = context.backup_root.absolute().resolve()
        target = (root / raw).absolute().resolve()
        if target == root or not target.is_relative_to(root):
            raise ApiError(400, "bad_dir", f"backups go into a new directory inside {root}")
        started = time.monotonic()
        try:
            root.mkdir(parents=True, exist_ok=True)
            written = await asyncio.to_thread(context.store.checkpoint, target)
        except (StoreError, OSError) as error:
            raise ApiError(409, "backup_failed", str(error)) from None
        return json_response(
            {
                "path": str(written),
                "serving_version": context.store.serving_version,
                "seconds": round(time.monotonic() - started, 3),
            }
        )

    document = orjson.dumps(openapi_document(MAX_BATCH_IDS, MAX_BODY_BYTES))

    @routes.get("/")
    async def status_page(request: web.Request) -> web.Response:
        return web.Response(text=STATUS_PAGE, content_type="text/html", charset="utf-8")

    @routes.get("/v1/status")
    async def status(request: web.Request) -> web.Response:
        """What the status page shows: versions, rollout, rate, freshness, dead letters."""
        metrics = context.metrics
        rollout = None if context.controller is None else context.controller.describe()
        p50, p99 = metrics.lag_percentile(0.5), metrics.lag_percentile(0.99)
        return json_response(
            {
                "serving_version": context.store.serving_version,
                "staged_version": None if rollout is None else rollout.get("staged_version"),
                "rollout": rollout,
                "events_per_second": round(metrics.events_per_second(), 1),
                "events_consumed": metrics.events_consumed,
                "freshness_ms": {
                    "p50": None if p50 is None else round(p50 * 1000, 1),
                    "p99": None if p99 is None else round(p99 * 1000, 1),
                },
                "dead_letters": metrics.dead_letters,
                "history": list(metrics.history),
            }
        )

    @routes.get("/openapi.json")
    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, headers=_JSON_HEADERS)

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok", **context.health()})

    @routes.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        ready, reason = (True, "serving") if context.readiness is None else context.readiness()
        response = json_response({"ready": ready, "reason": reason})
        if not ready:
            response.set_status(503)
        return response

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        text = context.metrics.render(
            context.store.version_counts(),
            context.store.serving_version,
            context.active_version,
            None if context.controller is None else context.controller.describe(),
            context.store.serving_cache,
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[CONTEXT_KEY] = context
    app.add_routes(routes)
    from stream.api.recommendations import add_recommendation_routes  # it builds on this module

    add_recommendation_routes(app)
    return app
