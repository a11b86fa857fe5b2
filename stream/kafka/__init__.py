"""Kafka plumbing: the embedded broker, topics, connection security, the producer."""

from __future__ import annotations

__all__: list[str] = []
