"""The recommendation routes' part of the OpenAPI document (see :mod:`stream.api.openapi`)."""

from __future__ import annotations

from typing import Any

from stream.api.recommend import MAX_K, MAX_RECOMMENDATION_USERS
from stream.ingest.events import MAX_ID_LENGTH

__all__ = ["RECOMMENDATION_SCHEMA", "recommendation_paths"]

RECOMMENDATION_SCHEMA = {
    "type": "object",
    "required": ["user_id", "version", "user_vector", "items", "excluded_seen"],
    "properties": {
        "user_id": {"type": "string"},
        "version": {"type": "integer", "minimum": 1, "description": "of the user vector and every item"},
        "user_vector": {"type": "string", "enum": ["native", "aligned"]},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "score"],
                "properties": {"id": {"type": "string"}, "score": {"type": "number"}},
            },
        },
        "excluded_seen": {"type": "integer", "minimum": 0},
    },
}
_K = {"type": "integer", "minimum": 1, "maximum": MAX_K}
_USER_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
_VERSION = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}


def _nullable(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "nullable": True, "description": description}


def recommendation_paths(error: Any, common_errors: dict[str, Any]) -> dict[str, Any]:
    """``/v1/recommendations/{user_id}`` and ``/v1/recommendations/batch``."""
    errors = {
        **common_errors,
        "404": error("the user has no vector of that version, or the version has no item index"),
        "503": error("no serving version yet, or the version's item index is being built"),
    }
    reference = {"$ref": "#/components/schemas/Recommendation"}
    return {
        "/v1/recommendations/{user_id}": {
            "get": {
                "operationId": "getRecommendations",
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
                    },
                    {"name": "k", "in": "query", "required": False, "schema": _K},
                    {"name": "version", "in": "query", "required": False, "schema": _VERSION},
                    {
                        "name": "exclude_seen",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["true", "false"]},
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
                                        "items": _USER_ID,
                                    },
                                    "k": _nullable(_K, "default 10"),
                                    "version": _nullable(_VERSION, "default: the serving version"),
                                    "exclude_seen": _nullable({"type": "boolean"}, "default true"),
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "one entry per user, null for a user with no vector of the version",
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
