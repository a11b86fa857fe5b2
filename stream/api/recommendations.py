"""The recommendation routes: the top-k items for a user from the item index of the user
vector's own version (:mod:`store.recommend`)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from store.errors import IndexUnavailableError, InvalidArgumentError
from store.recommend import MAX_K, MAX_RECOMMENDATION_USERS, Recommendation, recommend_many
from stream.api.context import context_of, json_response
from stream.api.errors import ApiError, api_error
from stream.api.inputs import check_id, json_body, parse_flag, parse_int, parse_version, query_param
from stream.api.schemas import COMMON_ERRORS, ID_SCHEMA, VERSION_SCHEMA, error_response

__all__ = ["DEFAULT_K", "RECOMMENDATION_SCHEMA", "ROUTES", "openapi_paths"]

DEFAULT_K = 10
ROUTES = web.RouteTableDef()


def _k(raw: Any, *, in_json: bool = False) -> int:
    return DEFAULT_K if raw is None else parse_int(raw, "bad_k", "k", 1, MAX_K, in_json=in_json)


def _as_json(result: Recommendation) -> dict[str, Any]:
    return {
        "user_id": result.user_id,
        "version": result.version,
        "user_vector": result.user_vector,
        "items": [
            {"id": item_id, "score": round(score, 6)}
            for item_id, score in zip(result.items.ids, result.items.scores, strict=True)
        ],
        "excluded_seen": result.excluded,
        "fallback": result.fallback,
    }


def _fallback(raw: object) -> bool:
    """Whether a user with no vector gets the most popular items (``popular``, the default)."""
    if raw is None or raw == "popular":
        return True
    if raw == "none":
        return False
    raise ApiError(400, "bad_fallback", 'fallback must be "popular" or "none"')


async def _recommend(
    request: web.Request, user_ids: list[str], k: int, version: int | None, exclude_seen: bool, fallback: bool
) -> tuple[int, list[Recommendation | None]]:
    context = context_of(request)
    if context.item_indexes is None:
        if context.indexes_pending:  # a worker still starting: try again shortly
            context.metrics.recommendations["index_building"] += 1
            message = "the worker is starting: its item indexes are not set up yet"
            raise ApiError(503, "index_building", message)
        context.metrics.recommendations["no_index"] += 1
        raise ApiError(404, "no_index", "item indexes are off (EMBSTREAM_INDEX_VERSIONS=0)")
    try:  # on a thread: a large batch must not hold up the event loop
        answered, results = await asyncio.to_thread(
            recommend_many,
            context.store,
            context.item_indexes,
            user_ids,
            k,
            version,
            context.registry.carry,
            exclude_seen,
            context.popular if fallback else None,
        )
    except (IndexUnavailableError, InvalidArgumentError) as error:
        answer = api_error(error)
        assert answer is not None
        context.metrics.recommendations[answer.code] += 1
        raise answer from None
    counts = context.metrics.recommendations
    counts["ok"] += sum(result is not None and result.fallback is None for result in results)
    counts["fallback_popular"] += sum(
        result is not None and result.fallback is not None for result in results
    )
    counts["no_user_vector"] += sum(result is None for result in results)
    return answered, results


@ROUTES.get("/v1/recommendations/{user_id}")
async def get_one(request: web.Request) -> web.Response:
    user_id = check_id(request.match_info["user_id"])
    k = _k(query_param(request, "k", "bad_k"))
    version = parse_version(query_param(request, "version", "bad_version"))
    exclude_seen = parse_flag(query_param(request, "exclude_seen", "bad_flag"), "exclude_seen")
    fallback = _fallback(query_param(request, "fallback", "bad_fallback"))
    answered, results = await _recommend(request, [user_id], k, version, exclude_seen, fallback)
    if results[0] is None:
        raise ApiError(404, "not_found", f"user {user_id!r} has no vector of version {answered}")
    return json_response(_as_json(results[0]))


@ROUTES.post("/v1/recommendations/batch")
async def get_batch(request: web.Request) -> web.Response:
    shape = '{"user_ids": [...], "k": K, "version": V}'
    body = json_body(await request.read(), shape)
    if not isinstance(body.get("user_ids"), list):
        raise ApiError(400, "bad_body", f"the body must be {shape}")
    if len(body["user_ids"]) > MAX_RECOMMENDATION_USERS:
        raise ApiError(400, "too_many_ids", f"at most {MAX_RECOMMENDATION_USERS} users per batch")
    user_ids = [check_id(user_id) for user_id in body["user_ids"]]
    k = _k(body.get("k"), in_json=True)
    version = parse_version(body.get("version"), in_json=True)
    exclude_seen = parse_flag(body.get("exclude_seen"), "exclude_seen")
    fallback = _fallback(body.get("fallback"))
    answered, results = await _recommend(request, user_ids, k, version, exclude_seen, fallback)
    return json_response(
        {"version": answered, "results": [None if r is None else _as_json(r) for r in results]}
    )


RECOMMENDATION_SCHEMA = {
    "type": "object",
    "required": ["user_id", "version", "user_vector", "items", "excluded_seen"],
    "properties": {
        "user_id": {"type": "string"},
        "version": {"type": "integer", "minimum": 1, "description": "of the user vector and every item"},
        "user_vector": {"type": "string", "enum": ["native", "aligned", "forward", "none"]},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "score"],
                "properties": {"id": {"type": "string"}, "score": {"type": "number"}},
            },
        },
        "excluded_seen": {"type": "integer", "minimum": 0},
        "fallback": {
            "type": "string",
            "enum": ["popular"],
            "nullable": True,
            "description": "popular: the user has no vector; the items are the most popular at the version",
        },
    },
}
_K = {"type": "integer", "minimum": 1, "maximum": MAX_K}


def _nullable(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "nullable": True, "description": description}


def openapi_paths() -> dict[str, Any]:
    """``/v1/recommendations/{user_id}`` and ``/v1/recommendations/batch``."""
    errors = {
        **COMMON_ERRORS,
        "404": error_response(
            "the version has no item index, or (with fallback=none) the user has no vector of that version"
        ),
        "503": error_response("no serving version yet, or the version's item index is being built"),
    }
    reference = {"$ref": "#/components/schemas/Recommendation"}
    return {
        "/v1/recommendations/{user_id}": {
            "get": {
                "operationId": "getRecommendations",
                "parameters": [
                    {"name": "user_id", "in": "path", "required": True, "schema": ID_SCHEMA},
                    {"name": "k", "in": "query", "required": False, "schema": _K},
                    {"name": "version", "in": "query", "required": False, "schema": VERSION_SCHEMA},
                    {
                        "name": "exclude_seen",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                    {
                        "name": "fallback",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["popular", "none"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "the k best items at the version asked for (default: serving)",
                        "content": {"application/json": {"schema": reference}},
                    },
                    **errors,
                },
            }
        },
        "/v1/recommendations/batch": {
            "post": {
                "operationId": "getRecommendationsBatch",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["user_ids"],
                                "properties": {
                                    "user_ids": {
                                        "type": "array",
                                        "maxItems": MAX_RECOMMENDATION_USERS,
                                        "items": ID_SCHEMA,
                                    },
                                    "k": _nullable(_K, "default 10"),
                                    "version": _nullable(VERSION_SCHEMA, "default: the serving version"),
                                    "exclude_seen": _nullable({"type": "boolean"}, "default true"),
                                    "fallback": _nullable(
                                        {"type": "string", "enum": ["popular", "none"]}, "default popular"
                                    ),
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": (
                            "one entry per user; null for a user with no vector of the version "
                            "when fallback is none"
                        ),
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["version", "results"],
                                    "properties": {
                                        "version": {"type": "integer", "minimum": 1},
                                        "results": {
                                            "type": "array",
                                            "items": {**reference, "nullable": True},
                                        },
                                    },
                                }
                            }
                        },
                    },
                    **errors,
                },
            }
        },
    }
