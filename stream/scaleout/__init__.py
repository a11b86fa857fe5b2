"""Scale-out: several workers sharing a consumer group, built on :mod:`stream.ingest`.

``changelog`` (the formats workers exchange), ``refresher`` (a batch prepared for publishing
before it is committed), ``replica`` (the follower applying other workers' changelog),
``worker`` (the consumer loop of one of several workers).
"""

from __future__ import annotations

__all__: list[str] = []
