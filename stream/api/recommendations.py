"""The recommendation routes: the top-k items for a user from the item index of the user
vector's own version (see :mod:`stream.api.recommend`)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from stream.api.app import (
    CONTEXT_KEY,
    ApiError,
    check_id,
    json_response,
    parse_int,
    parse_version,
    query_param,
)
from stream.api.recommend import (
    MAX_K,
    MAX_RECOMMENDATION_USERS,
    Recommendation,
    RecommendationError,
    recommend_many,
)

__all__ = ["DEFAULT_K", "add_recommendation_routes"]

DEFAULT_K = 10


def _k(raw: Any, *, in_json: bool = False) -> int:
    return DEFAULT_K if raw is None else parse_int(raw, "bad_k", "k", 1, MAX_K, in_json=in_json)


def _flag(raw: Any, name: str) -> bool:
    if raw is None:
        return True
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "1", "false", "0"):
        return raw.lower() in ("true", "1")
    raise ApiError(400, "bad_flag", f"{name} must be true or false")


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
    }


def add_recommendation_routes(app: web.Application) -> None:
    """Add ``GET /v1/recommendations/{user_id}`` and ``POST /v1/recommendations/batch``."""

    async def recommend(
        request: web.Request, user_ids: list[str], k: int, version: int | None, exclude_seen: bool
    ) -> tuple[int, list[Recommendation | None]]:
        context = request.app[CONTEXT_KEY]
        if context.item_indexes is None:
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
                context.carry,
                exclude_seen,
            )
        except RecommendationError as error:
            context.metrics.recommendations[error.code] += 1
            raise ApiError(error.status, error.code, error.message) from None
        context.metrics.recommendations["ok"] += sum(result is not None for result in results)
        context.metrics.recommendations["no_user_vector"] += sum(result is None for result in results)
        return answered, results

    async def get_one(request: web.Request) -> web.Response:
        user_id = check_id(request.match_info["user_id"])
        k = _k(query_param(request, "k", "bad_k"))
        version = parse_version(query_param(request, "version", "bad_version"))
        exclude_seen = _flag(query_param(request, "exclude_seen", "bad_flag"), "exclude_seen")
        answered, results = await recommend(request, [user_id], k, version, exclude_seen)
        if results[0] is None:
            raise ApiError(404, "not_found", f"user {user_id!r} has no vector of version {answered}")
        return json_response(_as_json(results[0]))

    async def get_batch(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ApiError(400, "bad_body", "the body must be JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("user_ids"), list):
            raise ApiError(400, "bad_body", 'the body must be {"user_ids": [...], "k": K, "version": V}')
        if len(body["user_ids"]) > MAX_RECOMMENDATION_USERS:
            raise ApiError(400, "too_many_ids", f"at most {MAX_RECOMMENDATION_USERS} users per batch")
        user_ids = [check_id(user_id) for user_id in body["user_ids"]]
        k = _k(body.get("k"), in_json=True)
        version = parse_version(body.get("version"), in_json=True)
        exclude_seen = _flag(body.get("exclude_seen"), "exclude_seen")
        answered, results = await recommend(request, user_ids, k, version, exclude_seen)
        return json_response(
            {"version": answered, "results": [None if r is None else _as_json(r) for r in results]}
        )

    app.router.add_get("/v1/recommendations/{user_id}", get_one)
    app.router.add_post("/v1/recommendations/batch", get_batch)
