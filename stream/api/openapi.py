"""The API's OpenAPI 3.0 document, served at ``/openapi.json`` and fuzzed in the tests: each
group of routes describes its own paths; this assembles them."""

from __future__ import annotations

from typing import Any

from stream.api import admin, embeddings, recommendations, status
from stream.api.schemas import COMMON_ERRORS, ERROR_SCHEMA

__all__ = ["openapi_document"]


def openapi_document(max_batch_ids: int, max_body_bytes: int) -> dict[str, Any]:
    """The document for an API with these limits."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "embstream lookup API",
            "version": "1",
            "description": "Versioned embeddings by kind and id; reads never mix versions.",
        },
        "components": {
            "schemas": {
                "Error": ERROR_SCHEMA,
                "Embedding": embeddings.EMBEDDING_SCHEMA,
                "Recommendation": recommendations.RECOMMENDATION_SCHEMA,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            **recommendations.openapi_paths(),
            **embeddings.openapi_paths(max_batch_ids, max_body_bytes),
            **status.openapi_paths(),
            **admin.openapi_paths(),
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "this document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": COMMON_ERRORS["401"],
                    },
                }
            },
        },
    }
