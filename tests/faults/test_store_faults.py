"""The store under faults: a backup taken from a running worker under load is consistent; a
restore followed by a restart replays exactly what the backup had not applied; a damaged
store stops ``embstream run`` with the ways out, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from models.features import UserState
from store.vector_store import VersionedVectorStore
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.topics import ensure_topics
from tests.conftest import WorkerProcess, produce
from tests.faults.streams import events, expected_counts, send_sentinels, stored_counts, wait_users

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, timeout=120
    )


def _applied_and_counted(path: Path) -> tuple[int, int, int]:
    """(events the offsets say were applied, interactions the user states count, users
    without a vector) in one store."""
    store = VersionedVectorStore(path, read_only=True)
    try:
        applied = sum(store.get_offset("backup-interactions", p) or 0 for p in range(4))
        counted, users = 0, []
        for user_id, raw in store.iter_states("user"):
            counted += UserState.from_bytes(raw).count
            users.append(user_id)
        missing = sum(record is None for record in store.get_records("user", users))
        return applied, counted, missing
    finally:
        store.close()


def test_backup_under_load_then_restore_replays_exactly_what_it_lacked(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path, report
) -> None:  # type: ignore[no-untyped-def]
    topic = "backup-interactions"
    ensure_topics([broker.bootstrap], {topic: 4})
    data, backup = tmp_path / "data", tmp_path / "backup"
    produced: list[dict] = []
    backups = {"EMBSTREAM_BACKUP_DIR": str(tmp_path)}
    with WorkerProcess(data, trained_registry, broker.bootstrap, topic, env=backups).start() as worker:
        stop = threading.Event()

        def load() -> None:
            round_ = 0
            while not stop.is_set():
                batch = events(60, 300, round_)
                produce(broker.bootstrap, topic, batch)
                produced.extend(batch)
                round_ += 1

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(2.0)
        started = time.monotonic()
        taken = _cli("store", "backup", str(backup), "--data-dir", str(data), "--api", worker.api)
        backup_s = time.monotonic() - started
        time.sleep(1.0)
        stop.set()
        loader.join()
        assert taken.returncode == 0, taken.stderr
        assert "written by the running worker" in taken.stderr
        wait_users(worker, send_sentinels(broker.bootstrap, topic, 0))
        assert worker.stop() == 0
    applied, counted, missing = _applied_and_counted(backup)
    # Consistent: the interactions the states count are exactly the events the offsets
    # say were applied, and every user has its vector.
    assert 0 < applied < len(produced) and counted == applied and missing == 0
    assert _cli("store", "check", "--data-dir", str(backup)).returncode == 0

    restored = _cli("store", "restore", str(backup), "--data-dir", str(data))
    assert restored.returncode == 0, restored.stderr
    started = time.monotonic()
    with WorkerProcess(data, trained_registry, broker.bootstrap, topic).start() as worker:
        wait_users(worker, send_sentinels(broker.bootstrap, topic, 1))
        replay_s = time.monotonic() - started
        assert worker.stop() == 0
    expected = expected_counts(produced)
    counts = stored_counts(data, sorted(expected))
    assert counts == dict(expected)
    report(
        events_produced=len(produced),
        events_in_backup=applied,
        events_replayed_after_restore=sum(counts.values()) - applied,
        events_applied=sum(counts.values()),
        seconds_backup_under_load=round(backup_s, 2),
        seconds_restart_to_caught_up=round(replay_s, 1),
    )


def test_a_damaged_store_stops_run_with_the_ways_out(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    store = VersionedVectorStore(data)
    writer = store.writer()
    writer.put_state("user", "u1", b"x")
    writer.commit()
    store.compact()
    store.close()
    for table in data.glob("*.sst"):
        table.write_bytes(table.read_bytes()[:10])
    command = [sys.executable, "-m", "stream.cli", "run", "--broker", broker.bootstrap]
    command += ["--data-dir", str(data), "--registry", str(trained_registry), "--api-port", "0"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EMBSTREAM_TOPIC": "damaged-interactions"},
    )
    assert result.returncode == 2
    assert "damaged" in result.stderr and "embstream store restore" in result.stderr
    assert "Traceback" not in result.stderr
