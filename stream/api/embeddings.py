"""The lookup routes: one embedding, or a batch as JSON or in the binary form.

Reads without ``?version`` use the store's serving version, one value for users and items
alike, so a caller never pairs a user vector of one version with item vectors of another;
the store resolves every version (:mod:`store.lookup`), with the registry's aligner chains.

The batch route answers in the binary form (:mod:`stream.api.vector_format`: a JSON header,
then one float32 matrix) when asked, by ``?format=binary`` or by an ``Accept`` header listing
``application/x-embstream-vectors`` at a quality no lower than ``application/json``'s.
``?format=json`` forces JSON and wins over ``Accept``; any other ``format`` is a 400
``bad_format``. There is no 406: an ``Accept`` naming neither type gets JSON. Errors are
always JSON.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from store.lookup import ResolvedMatrix, ResolvedVector, resolve_many, resolve_matrix, resolve_one
from stream.api.context import context_of, json_response
from stream.api.errors import ApiError
from stream.api.inputs import check_id, entity_kind, json_body, parse_version, query_param, wants_binary
from stream.api.schemas import (
    COMMON_ERRORS,
    ID_SCHEMA,
    KIND_PARAMETER,
    VERSION_PARAMETER,
    VERSION_SCHEMA,
    error_response,
)
from stream.api.vector_format import VECTORS_MEDIA_TYPE, encode_vectors

__all__ = ["EMBEDDING_SCHEMA", "MAX_BATCH_IDS", "ROUTES", "openapi_paths"]

MAX_BATCH_IDS = 10_000
ROUTES = web.RouteTableDef()
_BATCH_JSON_HEADERS = {"Content-Type": "application/json", "Vary": "Accept"}
_BATCH_BINARY_HEADERS = {"Content-Type": VECTORS_MEDIA_TYPE, "Vary": "Accept"}


def _vector_json(resolved: ResolvedVector) -> dict[str, Any]:
    return {
        "kind": resolved.kind,
        "id": resolved.id,
        "version": resolved.version,
        "vector": resolved.vector.astype("float32", copy=False),
        "updated_at": resolved.updated_at_ms,
        "source": resolved.source,
    }


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


def _batch_body(raw: bytes) -> tuple[list[str], int | None]:
    """The ids and version of a batch body ``{"ids": [...], "version": V}``."""
    shape = '{"ids": [...], "version": V}'
    body = json_body(raw, shape)
    if not isinstance(body.get("ids"), list):
        raise ApiError(400, "bad_body", f"the body must be {shape}")
    if len(body["ids"]) > MAX_BATCH_IDS:
        raise ApiError(400, "too_many_ids", f"at most {MAX_BATCH_IDS} ids per batch")
    return [check_id(entity_id) for entity_id in body["ids"]], parse_version(
        body.get("version"), in_json=True
    )


@ROUTES.get("/v1/embeddings/{kind}/{id}")
async def get_one(request: web.Request) -> web.Response:
    context = context_of(request)
    kind = entity_kind(request)
    entity_id = check_id(request.match_info["id"])
    version = parse_version(query_param(request, "version", "bad_version"))
    resolved = resolve_one(context.store, kind, entity_id, version, context.registry.carry)
    return json_response(_vector_json(resolved))


@ROUTES.post("/v1/embeddings/{kind}/batch")
async def get_batch(request: web.Request) -> web.Response:
    """Many ids of one kind at one version, as JSON (default) or binary (module docstring)."""
    context = context_of(request)
    kind = entity_kind(request)
    binary = wants_binary(request)
    ids, version = _batch_body(await request.read())
    carry = context.registry.carry
    if binary:
        return _vectors(resolve_matrix(context.store, kind, ids, version, carry))
    answered, resolved = resolve_many(context.store, kind, ids, version, carry)
    return json_response(
        {
            "kind": kind,
            "version": answered,
            "results": [None if r is None else _vector_json(r) for r in resolved],
        },
        headers=_BATCH_JSON_HEADERS,
    )


EMBEDDING_SCHEMA = {
    "type": "object",
    "required": ["kind", "id", "version", "vector", "updated_at", "source"],
    "properties": {
        "kind": {"type": "string", "enum": ["user", "item"]},
        "id": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "vector": {"type": "array", "items": {"type": "number"}},
        "updated_at": {"type": "integer", "description": "write time, epoch milliseconds"},
        "source": {"type": "string", "enum": ["native", "forward", "aligned"]},
    },
}


def openapi_paths(max_batch_ids: int, max_body_bytes: int) -> dict[str, Any]:
    """``/v1/embeddings/{kind}/{id}`` and ``/v1/embeddings/{kind}/batch``."""
    return {
        "/v1/embeddings/{kind}/{id}": {
            "get": {
                "operationId": "getEmbedding",
                "parameters": [
                    KIND_PARAMETER,
                    {"name": "id", "in": "path", "required": True, "schema": ID_SCHEMA},
                    VERSION_PARAMETER,
                ],
                "responses": {
                    "200": {
                        "description": "the vector at the version asked for (default: serving)",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Embedding"}}
                        },
                    },
                    "404": error_response("unknown id, or the id lacks that version"),
                    **COMMON_ERRORS,
                },
            }
        },
        "/v1/embeddings/{kind}/batch": {
            "post": {
                "operationId": "getEmbeddings",
                "parameters": [
                    KIND_PARAMETER,
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["json", "binary"]},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "description": f"at most {max_body_bytes} bytes",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["ids"],
                                "properties": {
                                    "ids": {"type": "array", "maxItems": max_batch_ids, "items": ID_SCHEMA},
                                    "version": {**VERSION_SCHEMA, "nullable": True},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "one entry per id (null: nothing to give), all of one version",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["kind", "version", "results"],
                                    "properties": {
                                        "kind": {"type": "string"},
                                        "version": {"type": "integer"},
                                        "results": {
                                            "type": "array",
                                            "items": {
                                                "allOf": [{"$ref": "#/components/schemas/Embedding"}],
                                                "nullable": True,
                                            },
                                        },
                                    },
                                }
                            },
                            VECTORS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "413": error_response("body too large"),
                    **COMMON_ERRORS,
                },
            }
        },
    }
