"""send_records' shutdown when interrupted (the broker client is a double here)."""

from __future__ import annotations

from typing import ClassVar

import pytest

import stream.kafka.producer as producer_module


class _InterruptedProducer:
    """Interrupted in the middle of a send, then fails inside its own close."""

    closed_with: ClassVar[list[object]] = []

    def __init__(self, **_: object) -> None:
        pass

    def send(self, *_: object, **__: object) -> None:
        raise KeyboardInterrupt

    def close(self, timeout: object = None) -> None:
        self.closed_with.append(timeout)
        raise AttributeError("'NoneType' object has no attribute 'sendall'")


def test_an_interrupt_reaches_the_caller_even_when_close_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer_module, "KafkaProducer", _InterruptedProducer)
    with pytest.raises(KeyboardInterrupt):
        producer_module.send_records(["127.0.0.1:9"], "t", iter([(b"k", b"v")]))
    assert _InterruptedProducer.closed_with == [1]
