"""Rollout: moving a running system to another encoder version.

``control`` (control messages and the rollout state folded from them), ``controller`` (one
worker's encoders and backfill, driven by the fold), ``plane`` (the control topic, read and
written between batches), ``backfill`` (re-encoding stored entities with a staged version).
"""

from __future__ import annotations

__all__: list[str] = []
