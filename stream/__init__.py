"""The stream side: Kafka in, fresh versioned vectors out, and the API that serves them.

Rooms, each with one role:

- ``ingest``: the one path from a Kafka record to a RocksDB write (event contract, the
  refresher that writes vectors, poison records, outbox, the consumer loop);
- ``scaleout``: several workers sharing a group, built on ``ingest`` (changelog, replica);
- ``rollout``: hot swaps (control messages, the state folded from them, controller, backfill);
- ``api``: the HTTP API, one module per group of routes, its OpenAPI document and server;
- ``kafka``: the embedded broker, topics, connection security, clients, the producer;
- ``cli``: the ``embstream`` command, one module per group of verbs;
- ``integrations``: embstream inside other stream processors' apps (a faust app's agent);
- ``settings``, ``metrics``, ``runtime`` (what every way of running a worker shares),
  ``service`` (the ``embstream run`` process), ``console``, ``errors``;
- ``client``: the Python client of the API (:class:`stream.client.Client`).

The names below are imported on first use, so ``from stream.client import Client`` loads
neither torch nor the worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.api.app import ApiContext, create_app
    from stream.api.vector_format import VECTORS_MEDIA_TYPE, decode_vectors
    from stream.errors import BrokerError, ControlError, SettingsError, StreamError
    from stream.ingest.events import Interaction, Rejection, parse_event
    from stream.ingest.outbox import OutgoingMessage, decode_outbox, encode_outbox
    from stream.ingest.refresher import BatchOutcome, ConsumedRecord, EmbeddingRefresher
    from stream.ingest.worker import StreamWorker
    from stream.kafka.broker import EmbeddedBroker
    from stream.kafka.topics import ensure_topics
    from stream.metrics import Metrics
    from stream.rollout.backfill import Backfiller
    from stream.rollout.controller import RolloutController, check_swappable
    from stream.rollout.messages import control_message
    from stream.rollout.state import RolloutState
    from stream.settings import Settings

__all__ = [
    "VECTORS_MEDIA_TYPE",
    "ApiContext",
    "Backfiller",
    "BatchOutcome",
    "BrokerError",
    "ConsumedRecord",
    "ControlError",
    "EmbeddedBroker",
    "EmbeddingRefresher",
    "Interaction",
    "Metrics",
    "OutgoingMessage",
    "Rejection",
    "RolloutController",
    "RolloutState",
    "Settings",
    "SettingsError",
    "StreamError",
    "StreamWorker",
    "check_swappable",
    "control_message",
    "create_app",
    "decode_outbox",
    "decode_vectors",
    "encode_outbox",
    "ensure_topics",
    "parse_event",
]

#: Where each public name lives.
_HOMES = {
    "ApiContext": "stream.api.app",
    "Backfiller": "stream.rollout.backfill",
    "BatchOutcome": "stream.ingest.refresher",
    "BrokerError": "stream.errors",
    "ConsumedRecord": "stream.ingest.refresher",
    "ControlError": "stream.errors",
    "EmbeddedBroker": "stream.kafka.broker",
    "EmbeddingRefresher": "stream.ingest.refresher",
    "Interaction": "stream.ingest.events",
    "Metrics": "stream.metrics",
    "OutgoingMessage": "stream.ingest.outbox",
    "Rejection": "stream.ingest.events",
    "RolloutController": "stream.rollout.controller",
    "RolloutState": "stream.rollout.state",
    "Settings": "stream.settings",
    "SettingsError": "stream.errors",
    "StreamError": "stream.errors",
    "StreamWorker": "stream.ingest.worker",
    "VECTORS_MEDIA_TYPE": "stream.api.vector_format",
    "check_swappable": "stream.rollout.controller",
    "control_message": "stream.rollout.messages",
    "create_app": "stream.api.app",
    "decode_outbox": "stream.ingest.outbox",
    "decode_vectors": "stream.api.vector_format",
    "encode_outbox": "stream.ingest.outbox",
    "ensure_topics": "stream.kafka.topics",
    "parse_event": "stream.ingest.events",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
