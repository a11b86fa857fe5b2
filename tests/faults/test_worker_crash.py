"""kill -9 of the worker under load: every event is applied exactly once, every embedding is
recomputed from the final state."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from stream.kafka.broker import EmbeddedBroker
from stream.kafka.topics import ensure_topics
from tests.conftest import WorkerProcess, produce
from tests.faults.streams import (
    events,
    expected_counts,
    send_sentinels,
    stored_counts,
    vectors_match_states,
    wait_users,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_kill_minus_9_mid_stream_loses_nothing_and_counts_nothing_twice(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path, report
) -> None:  # type: ignore[no-untyped-def]
    topic = "crash-interactions"
    ensure_topics([broker.bootstrap], {topic: 4})
    data = tmp_path / "data"
    with WorkerProcess(data, trained_registry, broker.bootstrap, topic).start() as worker:
        first = events(25, 3_000, 0)
        produce(broker.bootstrap, topic, first)
        time.sleep(0.3)  # let it be mid-way through the stream
        assert worker.process is not None
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        worker.process = None
        second = events(25, 1_000, 7)
        produce(broker.bootstrap, topic, second)
        restarted = time.monotonic()
        worker.start()
        wait_users(worker, send_sentinels(broker.bootstrap, topic, 1))
        recovered_s = time.monotonic() - restarted
        duplicates = worker.metric("embstream_events_duplicate_total")
        assert worker.stop() == 0
    expected = expected_counts(first + second)
    counts = stored_counts(data, sorted(expected))
    assert counts == dict(expected)
    stale = vectors_match_states(data, trained_registry, sorted(expected))
    assert stale == 0
    report(
        events_produced=len(first) + len(second),
        events_applied=sum(counts.values()),
        redelivered_and_skipped=int(duplicates),
        stale_vectors=stale,
        seconds_restart_to_caught_up=round(recovered_s, 1),
    )
