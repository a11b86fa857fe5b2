"""A worker killed in the middle of a swap's backfill: the rollout resumes in the right
state (staged, backfill continuing from its cursor) and promote waits for it."""

from __future__ import annotations

import signal
import time

import pytest

from stream.cli.swap import read_rollout
from tests.conftest import WorkerProcess, http_json, wait_until
from tests.integration.test_swap import _backfilled, _serving, _swap, worker

pytestmark = [pytest.mark.integration, pytest.mark.faults]
__all__ = ["worker"]  # a fixture shared with the swap tests


def test_a_worker_killed_mid_backfill_resumes_and_promote_waits_for_it(worker: WorkerProcess, report) -> None:  # type: ignore[no-untyped-def]
    # without a forward fill, promote waits for the native backfill (1,100 entities: about 11 s)
    staged = _swap(worker, "stage", "2", "--rate", "100", "--no-forward")
    assert staged.returncode == 0, staged.stderr
    time.sleep(1.5)
    refused = _swap(worker, "promote")
    assert refused.returncode == 2 and "not filled yet" in refused.stderr
    assert worker.process is not None
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait()
    worker.process = None
    state, _ = read_rollout([worker.broker], f"{worker.topic}.control")
    # users and items: the "index" kind follows the item backfill and is not counted again
    done_before = {
        kind: d for (_, v, kind), (d, _) in state.progress.items() if v == 2 and kind in ("user", "item")
    }
    assert 0 < sum(done_before.values()) < 1100  # stopped part-way
    restarted = time.monotonic()
    worker.start()
    rollout = wait_until(lambda: http_json("GET", f"{worker.api}/v1/versions")[1]["rollout"], timeout_s=30)
    assert (rollout["serving_version"], rollout["staged_version"]) == (1, 2)  # resumed as it was
    wait_until(lambda: _backfilled(worker, 2), timeout_s=90)
    resumed_s = time.monotonic() - restarted
    assert _swap(worker, "promote").returncode == 0
    wait_until(lambda: _serving(worker) == 2, timeout_s=20)
    status_code, body = http_json(
        "POST", f"{worker.api}/v1/embeddings/user/batch", {"ids": [f"u{n}" for n in range(600)]}
    )
    assert status_code == 200 and all(r is not None and r["version"] == 2 for r in body["results"])
    report(
        backfilled_before_kill=sum(done_before.values()),
        seconds_restart_to_backfill_complete=round(resumed_s, 1),
        users_at_version_2_after_promote=sum(r["version"] == 2 for r in body["results"]),
    )
