"""The stream side: event contract, the worker that refreshes embeddings, the lookup API."""

from __future__ import annotations

from stream.api import ApiContext, create_app
from stream.backfill import Backfiller
from stream.broker import BrokerError, EmbeddedBroker, ensure_topics
from stream.control import ControlError, RolloutState, control_message
from stream.events import Interaction, Rejection, parse_event
from stream.metrics import Metrics
from stream.outbox import OutgoingMessage, decode_outbox, encode_outbox
from stream.refresher import BatchOutcome, ConsumedRecord, EmbeddingRefresher
from stream.rollout import RolloutController, check_swappable
from stream.settings import Settings, SettingsError
from stream.vector_format import VECTORS_MEDIA_TYPE, decode_vectors
from stream.worker import StreamWorker

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
