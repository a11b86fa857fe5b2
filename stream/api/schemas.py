"""JSON-schema pieces that several route groups' OpenAPI paths share."""

from __future__ import annotations

from typing import Any

from models.registry import MAX_VERSION
from stream.ingest.events import MAX_ID_LENGTH

__all__ = [
    "COMMON_ERRORS",
    "ERROR_SCHEMA",
    "ID_SCHEMA",
    "KIND_PARAMETER",
    "VERSION_PARAMETER",
    "VERSION_SCHEMA",
    "error_response",
]

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
VERSION_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_VERSION}
ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}


def error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


KIND_PARAMETER = {
    "name": "kind",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": ["user", "item"]},
}
VERSION_PARAMETER = {
    "name": "version",
    "in": "query",
    "required": False,
    "description": "an exact version; older than the serving one may be carried back by aligners",
    "schema": VERSION_SCHEMA,
}
COMMON_ERRORS = {
    "400": error_response("bad kind, id, version, body or format"),
    "401": error_response("a bearer token is configured and was not given"),
    "409": error_response("the version asked for cannot be reached from the serving version"),
    "503": error_response("no serving version yet"),
}
