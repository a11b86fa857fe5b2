"""Sending interaction events to Kafka with kafka-python: from JSON lines or synthetic.

kafka-python is pinned to 2.3.x: against the embedded broker its 3.0 consumer groups got no
partition assignment, while 2.3's worked (its producer and admin client work in both).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import IO

import orjson
from kafka import KafkaProducer

from models.synthetic import SyntheticWorld

__all__ = ["RateLimiter", "jsonl_records", "send_records", "synthetic_records"]

Record = tuple[bytes | None, bytes]


class RateLimiter:
    """Paces calls to at most ``rate`` per second (no limit when ``rate`` is None)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.count = 0

    def wait(self) -> None:
        self.count += 1
        if not self.rate:
            return
        due = self.started + self.count / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def jsonl_records(lines: Iterable[bytes]) -> Iterator[Record]:
    """One record per non-blank line, sent as is; the key is the user_id when it parses.

    Lines that are not valid events are sent too: the worker routes them to the dead-letter
    topic with a reason, so nothing is dropped silently on the way in.
    """
    for line in lines:
        value = line.rstrip(b"\r\n")
        if not value.strip():
            continue
        key = None
        try:
            event = orjson.loads(value)
            if isinstance(event, dict) and isinstance(event.get("user_id"), str):
                key = event["user_id"].encode()
        except orjson.JSONDecodeError:
            pass
        yield key, value


def synthetic_records(
    count: int | None, seed: int = 0, bad_every: int = 0, world: SyntheticWorld | None = None
) -> Iterator[Record]:
    """Synthetic events stamped with the current time; ``count=None`` never ends.

    With ``bad_every=N``, every N-th record is malformed (to show the dead-letter path).
    ``world``: whose users and items (default: the small world of ``seed``).
    """
    world = world or SyntheticWorld(seed=seed)
    sent = 0
    for event in world.stream(seed=seed + 1):
        if count is not None and sent >= count:
            return
        sent += 1
        if bad_every and sent % bad_every == 0:
            yield None, b'{"user_id": 42, "item_id": "broken"}'
            continue
        event["ts"] = int(time.time() * 1000)
        yield str(event["user_id"]).encode(), orjson.dumps(event)


def send_records(
    servers: list[str],
    topic: str,
    records: Iterable[Record],
    rate: float | None = None,
    progress: IO[str] | None = None,
    **client_config: object,
) -> int:
    """Send ``records`` and wait until the broker has them all; returns how many were sent."""
    producer = KafkaProducer(
        bootstrap_servers=servers, client_id="embstream-producer", linger_ms=5, **client_config
    )
    limiter = RateLimiter(rate)
    sent = 0
    try:
        for key, value in records:
            limiter.wait()
            producer.send(topic, value=value, key=key)
            sent += 1
            if progress is not None and sent % 10_000 == 0:
                print(f"sent {sent:,}", file=progress, flush=True)
        producer.flush()
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): kafka-python's close can fail half-way through its
        # own shutdown; the interrupt is what the caller needs to see, not that.
        with contextlib.suppress(Exception):
            producer.close(timeout=1)
        raise
    producer.close()
    return sent
