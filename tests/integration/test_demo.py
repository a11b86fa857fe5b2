"""``embstream demo`` from an empty directory: embeddings appear fast, Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.kafka.broker import free_port
from tests.conftest import http_json, wait_until

pytestmark = pytest.mark.integration


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def test_demo_shows_embeddings_within_seconds_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    demo = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "demo", "--api-port", str(port), "--rate", "500"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("EMBSTREAM_")},
    )
    try:

        def first_vectors() -> bool:
            try:
                status, body = http_json("GET", f"http://127.0.0.1:{port}/v1/versions")
            except OSError:
                return False
            return status == 200 and body["store"]["user"].get("1", 0) > 0

        wait_until(first_vectors, timeout_s=60)
        elapsed = time.monotonic() - started
        children = _children(demo.pid)
        assert len(children) >= 2  # the broker and the producer
        print(f"first embeddings {elapsed:.1f} s after the start")
        # About 10 s on a quiet 2-core machine (training v1 is most of it); the bound leaves
        # room for a busy machine but still catches a 30 s consumer-group join.
        assert elapsed < 25, f"first embeddings after {elapsed:.1f} s"
    finally:
        demo.send_signal(signal.SIGINT)
        output = demo.communicate(timeout=30)[0].decode()
    assert demo.returncode == 0, output
    assert "started the embedded broker" in output and "training version 1" in output
    assert "ev/s" in output or "stopped" in output
    assert all(not Path(f"/proc/{child}").exists() for child in children), output
