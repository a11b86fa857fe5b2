"""Where the commands find a running worker's API: ``--api``, else ``EMBSTREAM_API_URL``,
else the worker's own ``EMBSTREAM_API_HOST``/``PORT``; with its token. The calls themselves
are :class:`stream.client.Client`'s."""

from __future__ import annotations

import os

from stream.client import Client
from stream.settings import Settings

__all__ = ["CLI_RETRIES", "api_client"]

#: A command retries a 503 or a refused connection this often (0.25 + 0.5 s of waiting),
#: then says what it got: a person at a terminal should not wait long for a worker that is down.
CLI_RETRIES = 2


def api_client(settings: Settings, api: str | None = None) -> Client:
    """A client of the worker that runs with ``settings`` (or of the API at ``api``)."""
    base = api or os.environ.get("EMBSTREAM_API_URL")
    if not base:
        host = settings.api_host
        if host in ("0.0.0.0", "", "::"):  # a wildcard bind is reached on loopback
            host = "127.0.0.1"
        elif ":" in host:  # an IPv6 address
            host = f"[{host}]"
        base = f"http://{host}:{settings.api_port}"
    return Client(base, token=settings.api_token, retries=CLI_RETRIES)
