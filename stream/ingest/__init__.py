"""Ingest: the one path from a Kafka record to a RocksDB write.

``events`` (the event contract), ``refresher`` (a batch applied: state, vectors, offsets and
outgoing messages in one write batch), ``poison`` (records that make it raise or crash),
``outbox`` (outgoing messages kept with the batch), ``worker`` (the consumer loop).
"""

from __future__ import annotations

__all__: list[str] = []
