"""The stream side: event contract, the worker that refreshes embeddings, the lookup API."""

from __future__ import annotations

from stream.api import ApiContext, create_app
from stream.broker import BrokerError, EmbeddedBroker, ensure_topics
from stream.events import Interaction, Rejection, parse_event
from stream.metrics import Metrics
from stream.outbox import OutgoingMessage, decode_outbox, encode_outbox
from stream.refresher import BatchOutcome, ConsumedRecord, EmbeddingRefresher
from stream.settings import Settings, SettingsError
from stream.worker import StreamWorker

__all__ = [
    "ApiContext",
    "BatchOutcome",
    "BrokerError",
    "ConsumedRecord",
    "EmbeddedBroker",
    "EmbeddingRefresher",
    "Interaction",
    "Metrics",
    "OutgoingMessage",
    "Rejection",
    "Settings",
    "SettingsError",
    "StreamWorker",
    "create_app",
    "decode_outbox",
    "encode_outbox",
    "ensure_topics",
    "parse_event",
]
