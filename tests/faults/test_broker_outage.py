"""The broker frozen (SIGSTOP) for 20 s under load, then resumed: lookups answer from
RocksDB throughout, the worker reconnects by itself, and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from stream.kafka.broker import EmbeddedBroker
from stream.kafka.topics import ensure_topics
from tests.conftest import WorkerProcess, http_json, produce
from tests.faults.streams import events, expected_counts, send_sentinels, stored_counts, wait_users

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_S = 20.0


class Reader(threading.Thread):
    """Single and batch lookups in a loop; every answer must be a 200 with vectors."""

    def __init__(self, worker: WorkerProcess, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.worker, self.users = worker, users
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.latencies: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                single, _ = http_json("GET", f"{self.worker.api}/v1/embeddings/user/{self.users[0]}")
                batch, body = http_json(
                    "POST", f"{self.worker.api}/v1/embeddings/user/batch", {"ids": self.users}
                )
            except OSError as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                continue
            self.latencies.append(time.monotonic() - started)
            if single != 200 or batch != 200 or any(r is None for r in body["results"]):
                self.failures.append(f"single {single}, batch {batch}")
            time.sleep(0.05)


def test_a_frozen_broker_stops_nothing_but_the_stream_and_loses_nothing(
    trained_registry: Path, tmp_path: Path, report
) -> None:  # type: ignore[no-untyped-def]
    topic = "outage-interactions"
    with EmbeddedBroker() as broker:  # its own broker: this test freezes it
        ensure_topics([broker.bootstrap], {topic: 4})
        data = tmp_path / "data"
        with WorkerProcess(data, trained_registry, broker.bootstrap, topic).start() as worker:
            before = events(40, 2_000, 0)
            produce(broker.bootstrap, topic, before)
            wait_users(worker, send_sentinels(broker.bootstrap, topic, 0))
            users = sorted(expected_counts(before))
            reader = Reader(worker, users)
            reader.start()
            during = events(40, 1_500, 3)
            # A producer (connected before) keeps sending while the broker is frozen; its
            # records wait in the client and go through once the broker is back.
            producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], linger_ms=5)
            assert broker.process is not None
            os.kill(broker.process.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()

            def send_during_outage() -> None:
                for event in during:
                    producer.send(topic, json.dumps(event).encode(), key=event["user_id"].encode())
                    time.sleep(0.005)
                producer.flush(timeout=120)

            sender = threading.Thread(target=send_during_outage)
            sender.start()
            time.sleep(OUTAGE_S)
            os.kill(broker.process.pid, signal.SIGCONT)
            resumed_at = time.monotonic()
            reads_during_outage = sum(1 for _ in reader.latencies)
            sender.join(timeout=120)
            assert not sender.is_alive()
            producer.close()
            after = events(40, 500, 11)
            produce(broker.bootstrap, topic, after)
            wait_users(worker, send_sentinels(broker.bootstrap, topic, 1), timeout_s=120)
            caught_up_s = time.monotonic() - resumed_at
            reader.stop.set()
            reader.join(timeout=10)
            assert worker.process is not None and worker.process.poll() is None  # never restarted
            assert worker.stop() == 0
    assert reader.failures == [], reader.failures[:5]
    produced = before + during + after
    expected = expected_counts(produced)
    counts = stored_counts(data, sorted(expected))
    assert counts == dict(expected)
    slowest_ms = max(reader.latencies) * 1000
    report(
        outage_s=round(resumed_at - frozen_at, 1),
        lookups=len(reader.latencies),
        lookups_during_outage=reads_during_outage,
        failed_lookups=len(reader.failures),
        slowest_lookup_ms=round(slowest_ms, 1),
        events_produced=len(produced),
        events_applied=sum(counts.values()),
        seconds_resume_to_caught_up=round(caught_up_s, 1),
    )
