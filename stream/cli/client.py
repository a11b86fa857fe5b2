"""The one client of a running worker's API the commands share: where it is (``--api``, else
``EMBSTREAM_API_URL``, else the worker's own ``EMBSTREAM_API_HOST``/``PORT``), its token, and
JSON in and out."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from stream.errors import StreamError
from stream.settings import Settings

__all__ = ["ApiAnswerError", "ApiClient", "ApiUnreachableError"]


class ApiAnswerError(StreamError):
    """The API answered with an error: ``status`` and its JSON ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status, self.message = status, message


class ApiUnreachableError(StreamError):
    """Nothing answered at the API's address."""


@dataclass(frozen=True)
class ApiClient:
    base: str
    token: str = field(default="", repr=False)

    @classmethod
    def of(cls, settings: Settings, api: str | None = None) -> ApiClient:
        """The API of the worker that runs with ``settings`` (or at ``api``)."""
        base = api or os.environ.get("EMBSTREAM_API_URL")
        if not base:
            host = settings.api_host
            if host in ("0.0.0.0", "", "::"):  # a wildcard bind is reached on loopback
                host = "127.0.0.1"
            elif ":" in host:  # an IPv6 address
                host = f"[{host}]"
            base = f"http://{host}:{settings.api_port}"
        return cls(base.rstrip("/"), settings.api_token)

    def get(self, path: str, query: dict[str, object] | None = None, timeout_s: float = 10.0) -> Any:
        """``GET path`` with the ``query`` parameters that are not ``None``."""
        given = {name: value for name, value in (query or {}).items() if value is not None}
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(given)}" if given else "")
        return self._send(urllib.request.Request(url), timeout_s)

    def post(self, path: str, body: Any, timeout_s: float = 10.0) -> Any:
        request = urllib.request.Request(
            f"{self.base}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return self._send(request, timeout_s)

    def _send(self, request: urllib.request.Request, timeout_s: float) -> Any:
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                message = json.loads(raw).get("message", error.reason)
            except (ValueError, AttributeError):
                message = raw[:200].decode(errors="replace") or error.reason
            raise ApiAnswerError(error.code, str(message)) from None
        except urllib.error.URLError as error:
            raise ApiUnreachableError(str(error.reason)) from None
        except OSError as error:  # a reset or timeout mid-answer
            raise ApiUnreachableError(str(error)) from None
