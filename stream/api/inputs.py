"""What a request may hold: kinds, ids, versions, integers, flags and formats, each checked
and refused with a 400 that names it."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

from models.registry import MAX_VERSION
from store.keys import KINDS
from stream.api.errors import ApiError
from stream.api.vector_format import VECTORS_MEDIA_TYPE
from stream.ingest.events import MAX_ID_LENGTH

__all__ = [
    "check_id",
    "entity_kind",
    "json_body",
    "parse_flag",
    "parse_int",
    "parse_version",
    "query_param",
    "wants_binary",
]


def entity_kind(request: web.Request) -> str:
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise ApiError(400, "bad_kind", f"kind must be one of {', '.join(KINDS)}")
    return kind


def check_id(entity_id: Any) -> str:
    if not isinstance(entity_id, str) or not 1 <= len(entity_id) <= MAX_ID_LENGTH:
        raise ApiError(400, "bad_id", f"ids are strings of 1 to {MAX_ID_LENGTH} characters")
    return entity_id


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


def parse_flag(raw: Any, name: str) -> bool:
    """``true``/``false`` (or ``1``/``0``) in a query, a JSON boolean in a body; default true."""
    if raw is None:
        return True
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "1", "false", "0"):
        return raw.lower() in ("true", "1")
    raise ApiError(400, "bad_flag", f"{name} must be true or false")


def query_param(request: web.Request, name: str, code: str) -> str | None:
    """The query parameter ``name``, given at most once (a repeated one is a 400 ``code``)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, code, f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def json_body(raw: bytes, shape: str) -> dict[str, Any]:
    """A body that must be a JSON object (``shape`` describes it in the 400)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad_body", "the body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", f"the body must be {shape}")
    return body


def wants_binary(request: web.Request) -> bool:
    """Whether a batch answer is binary: ``?format`` decides, else the ``Accept`` header."""
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
