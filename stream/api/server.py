"""Serving the lookup API over TCP with limits a hostile client cannot get around.

- **Headers**: a connection must deliver a request's headers within ``header_timeout_s``
  of connecting or of its previous answer (aiohttp's keep-alive timer, which also closes
  idle keep-alive connections after that long). A request whose headers never finish is
  dropped then.
- **Bodies**: the app reads each body within ``body_timeout_s`` (``stream.api.app``'s
  middleware), or answers 408 ``body_timeout`` and closes the connection.
- **Connections**: at most ``max_connections`` open at once; beyond that a new connection is
  answered 503 ``too_many_connections`` and closed at once, so slots always come back.
- **Disconnects**: a client that goes away mid-request is one line at debug level, not a
  traceback at error level.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
from aiohttp import web

__all__ = ["HttpLimits", "HttpServer"]

log = logging.getLogger("embstream.api")


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 512


_BUSY_BODY = orjson.dumps(
    {"error": "too_many_connections", "message": "the API has as many connections open as it allows"}
)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Busy(asyncio.Protocol):
    """A connection over the limit: answered 503 and closed, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class _QuietDisconnects(logging.Filter):
    """aiohttp's server logs a client gone mid-request as an error with a traceback; such a
    record is logged again as one line at debug level instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (ConnectionResetError, asyncio.CancelledError)):
            log.debug("client went away mid-request (%s)", error)
            return False
        return True


class HttpServer:
    """``app`` served on ``host:port`` within ``limits`` (see the module docstring)."""

    def __init__(self, app: web.Application, host: str, port: int, limits: HttpLimits) -> None:
        self.app, self.host, self.port, self.limits = app, host, port, limits
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.refused_connections = 0

    async def start(self) -> None:
        """Bind and listen (an address in use fails here, at once)."""
        logging.getLogger("aiohttp.server").addFilter(_QUIET)
        runner = web.AppRunner(
            self.app,
            access_log=None,
            keepalive_timeout=self.limits.header_timeout_s,
            # After an answer that left a body unread (a 408, a 401), drain it this long at
            # most before closing (aiohttp's default is 10 s a connection).
            lingering_time=min(2.0, self.limits.body_timeout_s),
        )
        await runner.setup()
        self._runner = runner
        server = runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= self.limits.max_connections:
                self.refused_connections += 1
                return _Busy()
            return server()

        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(protocol, self.host, self.port, reuse_address=True)
        except OSError:
            await runner.cleanup()
            raise

    @property
    def connections(self) -> int:
        server = None if self._runner is None else self._runner.server
        return 0 if server is None else len(server.connections)

    async def stop(self) -> None:
        """Stop accepting, then close every connection (requests in flight get a moment)."""
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
        logging.getLogger("aiohttp.server").removeFilter(_QUIET)


_QUIET = _QuietDisconnects()
