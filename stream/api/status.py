"""What a running worker says about itself: the status page and its data, versions, health,
readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from stream.api.context import ApiContext, context_of, json_response
from stream.api.schemas import COMMON_ERRORS
from stream.api.status_page import STATUS_PAGE

__all__ = ["OPEN_PATHS", "ROUTES", "openapi_paths", "readiness"]

ROUTES = web.RouteTableDef()
#: Routes answered without a token: probes must not need a secret, and the page holds no data.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})


@ROUTES.get("/")
async def status_page(request: web.Request) -> web.Response:
    return web.Response(text=STATUS_PAGE, content_type="text/html", charset="utf-8")


@ROUTES.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    """What the status page shows: versions, rollout, rate, freshness, dead letters."""
    context = context_of(request)
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


@ROUTES.get("/v1/versions")
async def versions(request: web.Request) -> web.Response:
    context = context_of(request)
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


@ROUTES.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", **context_of(request).health()})


def readiness(context: ApiContext) -> tuple[bool, str]:
    """Whether this node can take traffic, and why not: its serving encoder is loaded, its
    consumer applies events (joined its group; a scale-out replica caught up), and the item
    index of the serving version is built (when indexes are on). The index counts at start
    only: after a swap, every worker builds the new version's index at once, and lookups
    must not leave every load balancer together meanwhile (recommendations of a version
    whose index is building answer 503 on their own)."""
    controller = context.controller
    if controller is None or controller.serving_encoder is None:
        return False, "starting: loading the serving encoder"
    ready, reason = (True, "serving") if context.readiness is None else context.readiness()
    if not ready:
        return ready, reason
    if context.item_indexes is None:
        if context.indexes_pending:
            return False, "starting: setting up the item indexes"
        return True, reason
    if not context.indexes_were_ready:
        serving = context.store.serving_version
        status = context.item_indexes.status().get(serving) if serving is not None else None
        if serving is None or status is None or status.building:
            return False, f"starting: building the item index of version {serving or '(none yet)'}"
        context.indexes_were_ready = True
    return True, reason


@ROUTES.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    ready, reason = readiness(context_of(request))
    response = json_response({"ready": ready, "reason": reason})
    if not ready:
        response.set_status(503)
    return response


@ROUTES.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    context = context_of(request)
    text = context.metrics.render(
        context.store.version_counts(),
        context.store.serving_version,
        context.active_version,
        None if context.controller is None else context.controller.describe(),
        context.store.serving_cache,
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def _json_object(description: str, required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_paths() -> dict[str, Any]:
    nullable_version = {"type": "integer", "nullable": True}
    ready_schema = {"ready": {"type": "boolean"}, "reason": {"type": "string"}}
    return {
        "/v1/versions": {
            "get": {
                "operationId": "getVersions",
                "responses": {
                    "200": _json_object(
                        "serving, active and registry versions, rollout, store counts",
                        ["serving_version", "registry_versions", "store"],
                        {
                            "serving_version": nullable_version,
                            "active_encoder_version": nullable_version,
                            "registry_versions": {"type": "array", "items": {"type": "integer"}},
                            "rollout": {"type": "object", "nullable": True},
                            "store": {"type": "object"},
                        },
                    ),
                    "401": COMMON_ERRORS["401"],
                },
            }
        },
        "/v1/status": {
            "get": {
                "operationId": "getStatus",
                "responses": {
                    "200": _json_object(
                        "versions, rollout, events/s, freshness, dead letters, history",
                        ["serving_version", "events_per_second", "history"],
                        {
                            "serving_version": nullable_version,
                            "staged_version": nullable_version,
                            "events_per_second": {"type": "number"},
                            "events_consumed": {"type": "integer"},
                            "dead_letters": {"type": "integer"},
                            "freshness_ms": {"type": "object"},
                            "history": {"type": "array", "items": {"type": "object"}},
                        },
                    ),
                    "401": COMMON_ERRORS["401"],
                },
            }
        },
        "/": {
            "get": {
                "operationId": "statusPage",
                "security": [{}],
                "responses": {
                    "200": {
                        "description": "the status page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "security": [{}],
                "responses": {
                    "200": _json_object("alive", ["status"], {"status": {"type": "string", "enum": ["ok"]}})
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "security": [{}],
                "responses": {
                    "200": _json_object(
                        "ready: the encoder is loaded, events are applied, the item index is built",
                        ["ready", "reason"],
                        ready_schema,
                    ),
                    "503": _json_object(
                        "not ready yet: starting, joining the group, replaying the changelog "
                        "(scale-out) or building the item index",
                        ["ready", "reason"],
                        ready_schema,
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": COMMON_ERRORS["401"],
                },
            }
        },
    }
