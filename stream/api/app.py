"""The API application: its routes (one module per group), the token check, the body's time
limit, and errors answered as JSON with the status :mod:`stream.api.errors` gives them.

:func:`add_api` puts the routes on any aiohttp application: ours (:func:`create_app`), or a
host's, such as a faust app's web server (:mod:`stream.integrations.faust`). Each route
carries its own guard (token, body time limit, errors), so a host's other routes are left as
they are.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from stream.api import admin, embeddings, recommendations, status
from stream.api.context import CONTEXT_KEY, JSON_HEADERS, ApiContext, context_of, json_response
from stream.api.embeddings import MAX_BATCH_IDS
from stream.api.errors import ApiError, api_error
from stream.api.openapi import openapi_document

__all__ = ["MAX_BATCH_IDS", "MAX_BODY_BYTES", "ApiContext", "ApiError", "add_api", "create_app"]

log = logging.getLogger("embstream.api")

MAX_BODY_BYTES = 4 << 20
_DOCUMENT = web.AppKey("embstream_openapi", bytes)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _authorized(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    presented = given.strip().encode("utf-8", "surrogateescape")  # any header bytes: no 500
    return scheme.lower() == "bearer" and hmac.compare_digest(presented, token.encode())


def _unauthorized() -> web.Response:
    body = {"error": "unauthorized", "message": "a valid bearer token is required"}
    response = json_response(body, status=401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="embstream"'
    return response


def _answer(error: ApiError) -> web.Response:
    return json_response({"error": error.code, "message": error.message}, status=error.status)


async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    context = context_of(request)
    if context.token and request.path not in status.OPEN_PATHS and not _authorized(request, context.token):
        context.metrics.unauthorized += 1
        return _unauthorized()
    try:
        if request.body_exists:  # read within the time allowed; handlers get it from memory
            try:
                await asyncio.wait_for(request.read(), context.body_timeout_s)
            except TimeoutError:
                message = f"the body did not arrive within {context.body_timeout_s} s"
                response = _answer(ApiError(408, "body_timeout", message))
                response.force_close()
                return response
        return await handler(request)
    except ConnectionResetError:  # the client went away: nobody to answer
        log.debug("client %s went away during %s %s", request.remote, request.method, request.path)
        return web.Response(status=400)
    except web.HTTPRequestEntityTooLarge:
        return _answer(ApiError(413, "body_too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes"))
    except Exception as error:
        answer = api_error(error)
        if answer is None:
            raise
        return _answer(answer)


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_DOCUMENT], headers=JSON_HEADERS)


def _guarded(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        return await _guard(request, handler)

    return guarded


def add_api(app: web.Application, context: ApiContext | None) -> None:
    """Serve ``context``'s store on ``app``: every route of the API, each guarded. A host
    that opens the store later passes ``None`` and sets ``app[CONTEXT_KEY]`` before serving."""
    if context is not None:
        app[CONTEXT_KEY] = context
    app[_DOCUMENT] = orjson.dumps(openapi_document(MAX_BATCH_IDS, MAX_BODY_BYTES))
    for group in (embeddings, recommendations, admin, status):
        for route in group.ROUTES:
            assert isinstance(route, web.RouteDef)
            if route.method == "GET":  # as RouteTableDef registers it: HEAD answered too
                app.router.add_get(route.path, _guarded(route.handler), **route.kwargs)
            else:
                app.router.add_route(route.method, route.path, _guarded(route.handler), **route.kwargs)
    app.router.add_get("/openapi.json", _guarded(_openapi))


def create_app(context: ApiContext) -> web.Application:
    """The aiohttp application serving ``context``'s store."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    add_api(app, context)
    return app
