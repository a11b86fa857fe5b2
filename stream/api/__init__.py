"""The HTTP API: lookups, recommendations, versions, status, health and metrics.

``app`` (the application and its context), one module per group of routes, ``openapi`` (the
document), ``status_page`` (the HTML), ``vector_format`` (the binary batch format),
``server`` (serving it within limits).
"""

from __future__ import annotations

__all__: list[str] = []
