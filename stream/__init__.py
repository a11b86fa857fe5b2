"""The stream side: event contract, the worker that refreshes embeddings, the lookup API."""

from __future__ import annotations

from stream.api.app import ApiContext, create_app
from stream.api.vector_format import VECTORS_MEDIA_TYPE, decode_vectors
from stream.ingest.events import Interaction, Rejection, parse_event
from stream.ingest.outbox import OutgoingMessage, decode_outbox, encode_outbox
from stream.ingest.refresher import BatchOutcome, ConsumedRecord, EmbeddingRefresher
from stream.ingest.worker import StreamWorker
from stream.kafka.broker import BrokerError, EmbeddedBroker
from stream.kafka.topics import ensure_topics
from stream.metrics import Metrics
from stream.rollout.backfill import Backfiller
from stream.rollout.controller import RolloutController, check_swappable
from stream.rollout.messages import ControlError, control_message
from stream.rollout.state import RolloutState
from stream.settings import Settings, SettingsError

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
