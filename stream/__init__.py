"""The stream side: Kafka in, fresh versioned vectors out, and the API that serves them.

Rooms, each with one role:

- ``ingest``: the one path from a Kafka record to a RocksDB write (event contract, the
  refresher that writes vectors, poison records, outbox, the consumer loop);
- ``scaleout``: several workers sharing a group, built on ``ingest`` (changelog, replica);
- ``rollout``: hot swaps (control messages, the state folded from them, controller, backfill);
- ``api``: the HTTP API, one module per group of routes, its OpenAPI document and server;
- ``kafka``: the embedded broker, topics, connection security, clients, the producer;
- ``cli``: the ``embstream`` command, one module per group of verbs;
- ``settings``, ``metrics``, ``service`` (putting a worker together), ``console``, ``errors``.
"""

from __future__ import annotations

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
