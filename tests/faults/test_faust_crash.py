"""kill -9 of a faust worker hosting embstream, mid-stream: every event is applied exactly
once (its agent acknowledges only after the RocksDB commit; the stored offsets skip what a
redelivery repeats)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from stream.kafka.broker import EmbeddedBroker
from stream.kafka.topics import ensure_topics
from tests.conftest import produce, wait_until
from tests.faults.streams import events, expected_counts, send_sentinels, stored_counts, wait_users
from tests.faust_app import FaustWorker

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_kill_minus_9_of_a_faust_worker_counts_every_event_once(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path, report
) -> None:  # type: ignore[no-untyped-def]
    topic = "faust-crash-interactions"
    ensure_topics([broker.bootstrap], {topic: 4})
    data = tmp_path / "data"
    with FaustWorker(data, trained_registry, broker.bootstrap, topic, app_id="faustcrash").start() as app:
        first = events(25, 3_000, 0, prefix="f")
        produce(broker.bootstrap, topic, first)
        wait_until(lambda: app.metric("embstream_events_applied_total") > 200, timeout_s=30)
        assert app.process is not None
        app.process.send_signal(signal.SIGKILL)  # mid-stream: faust delivers ~5,000 events/s
        app.process.wait()
        app.process = None
        second = events(25, 1_000, 7, prefix="f")
        produce(broker.bootstrap, topic, second)
        restarted = time.monotonic()
        app.start()
        wait_users(app, send_sentinels(broker.bootstrap, topic, 1), timeout_s=90)
        recovered_s = time.monotonic() - restarted
        duplicates = app.metric("embstream_events_duplicate_total")
        assert app.stop() == 0, app.log()
    expected = expected_counts(first + second)
    counts = stored_counts(data, sorted(expected))
    assert counts == dict(expected)
    assert duplicates > 0  # the restart was handed events already applied, and skipped them
    report(
        faust_events_produced=len(first) + len(second),
        faust_events_applied=sum(counts.values()),
        faust_redelivered_and_skipped=int(duplicates),
        faust_seconds_restart_to_caught_up=round(recovered_s, 1),
    )
