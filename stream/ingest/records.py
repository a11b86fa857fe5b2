"""What a batch is made of and what applying it gives: consumed records and the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from stream.ingest.outbox import OutgoingMessage

__all__ = ["BatchOutcome", "ConsumedRecord", "RecordPosition", "SourceRecord"]


class RecordPosition(Protocol):
    """Where a record sits in its topic."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


class SourceRecord(RecordPosition, Protocol):
    """The parts of a consumed Kafka record the write path reads (aiokafka's records have
    them, so the worker hands them over without a copy)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...  # epoch milliseconds


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A :class:`SourceRecord` built by hand (tests, tools)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


@dataclass
class BatchOutcome:
    consumed: int = 0
    applied: int = 0
    item_events: int = 0  # events applied to item state (with scale-out, on the item side)
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    #: records dead-lettered because they killed the worker twice (stream.ingest.poison)
    quarantined: int = 0
    written: dict[tuple[str, int], int] = field(default_factory=dict)
    lags_seconds: list[float] = field(default_factory=list)
    outbox: list[OutgoingMessage] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
