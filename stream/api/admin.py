"""``POST /v1/admin/backup``: a consistent copy of the store, written by the running worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from store.errors import StoreError
from stream.api.context import context_of, json_response
from stream.api.errors import ApiError
from stream.api.inputs import json_body
from stream.api.schemas import COMMON_ERRORS, error_response

__all__ = ["ROUTES", "openapi_paths"]

ROUTES = web.RouteTableDef()


@ROUTES.post("/v1/admin/backup")
async def backup(request: web.Request) -> web.Response:
    """A consistent copy of the store, written by this worker into ``{"dir": PATH}``: a new
    directory inside its backup directory (``EMBSTREAM_BACKUP_DIR``; a relative PATH is
    taken from there), while it keeps running."""
    context = context_of(request)
    if context.backup_root is None or not context.admin_allowed:
        raise ApiError(
            403,
            "admin_disabled",
            "backups through the API need EMBSTREAM_API_TOKEN when the API listens beyond loopback",
        )
    shape = '{"dir": "name or path in the backup directory"}'
    raw = json_body(await request.read(), shape).get("dir")
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise ApiError(400, "bad_body", f"the body must be {shape}")
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


def openapi_paths() -> dict[str, Any]:
    return {
        "/v1/admin/backup": {
            "post": {
                "operationId": "backupStore",
                "description": "A consistent copy of the store, written by the worker to a new directory",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["dir"],
                                "properties": {"dir": {"type": "string", "minLength": 1}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "written",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": COMMON_ERRORS["400"],
                    "401": COMMON_ERRORS["401"],
                    "409": error_response("the directory exists, or the copy failed"),
                },
            }
        }
    }
