"""Recommendations end to end on the real broker and RocksDB: fresh users and items within
the freshness budget, seen items left out, indexes rebuilt from the store after a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.kafka.broker import EmbeddedBroker
from tests.conftest import WorkerProcess, http_json, produce, wait_until

pytestmark = pytest.mark.integration
TOPIC = "recommend-interactions"
#: Event produced to recommendation served, in seconds (the README's freshness figures are
#: tens of milliseconds; this leaves room for a loaded CI machine).
FRESHNESS_BUDGET_S = 5.0
ITEMS = 300


def _event(user: str, item: str, kind: str = "click") -> dict[str, object]:
    return {"user_id": user, "item_id": item, "type": kind, "ts": int(time.time() * 1000)}


def _recommend(worker: WorkerProcess, user: str, query: str = "") -> tuple[int, dict]:
    return http_json("GET", f"{worker.api}/v1/recommendations/{user}{query}")


@pytest.fixture(scope="module")
def worker(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    running = WorkerProcess(
        tmp_path_factory.mktemp("recommend") / "data", trained_registry, broker.bootstrap, TOPIC
    ).start()
    produce(
        broker.bootstrap,
        TOPIC,
        [
            _event(f"u{n % 40}", f"i{(n * 7) % ITEMS}", "purchase" if n % 5 == 0 else "click")
            for n in range(900)
        ],
    )
    wait_until(lambda: http_json("GET", f"{running.api}/v1/embeddings/item/i{(899 * 7) % ITEMS}")[0] == 200)
    yield running
    if running.process is not None:
        assert running.stop() == 0, running.log()


def test_a_new_user_gets_recommendations_within_the_freshness_budget(
    worker: WorkerProcess, broker: EmbeddedBroker
) -> None:
    started = time.monotonic()
    produce(broker.bootstrap, TOPIC, [_event("newcomer", "i3"), _event("newcomer", "i10")])
    body = wait_until(
        lambda: (lambda answer: answer[1] if answer[0] == 200 and answer[1]["fallback"] is None else None)(
            _recommend(worker, "newcomer", "?k=20")
        ),
        timeout_s=FRESHNESS_BUDGET_S,
    )
    elapsed = time.monotonic() - started
    assert elapsed < FRESHNESS_BUDGET_S
    assert body["version"] == 1 and body["user_vector"] == "native"
    ids = [item["id"] for item in body["items"]]
    assert len(ids) == 20 == len(set(ids))
    assert "i3" not in ids and "i10" not in ids and body["excluded_seen"] == 2
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    # the scores are the user's vector times the items' vectors, at the version named
    _, user = http_json("GET", f"{worker.api}/v1/embeddings/user/newcomer")
    _, items = http_json("POST", f"{worker.api}/v1/embeddings/item/batch", {"ids": ids})
    for item, vector in zip(body["items"], items["results"], strict=True):
        assert vector["version"] == 1
        expected = sum(a * b for a, b in zip(user["vector"], vector["vector"], strict=True))
        assert item["score"] == pytest.approx(expected, abs=1e-4)
    # seen items come back when asked for
    _, everything = _recommend(worker, "newcomer", f"?k={ITEMS + 10}&exclude_seen=false")
    assert {"i3", "i10"} <= {item["id"] for item in everything["items"]}


def test_an_item_that_just_received_interactions_can_be_recommended(
    worker: WorkerProcess, broker: EmbeddedBroker
) -> None:
    started = time.monotonic()
    produce(broker.bootstrap, TOPIC, [_event("u1", "brand-new-item"), _event("u2", "brand-new-item")])

    def listed() -> dict | None:
        status, body = _recommend(worker, "u5", f"?k={ITEMS + 10}")
        return body if status == 200 and "brand-new-item" in {i["id"] for i in body["items"]} else None

    body = wait_until(listed, timeout_s=FRESHNESS_BUDGET_S)
    assert time.monotonic() - started < FRESHNESS_BUDGET_S
    assert len(body["items"]) == ITEMS + 1 - body["excluded_seen"]  # every item, each once


def test_a_batch_answers_every_user_at_one_version(worker: WorkerProcess) -> None:
    status, body = http_json(
        "POST", f"{worker.api}/v1/recommendations/batch", {"user_ids": ["u1", "nobody", "u2"], "k": 3}
    )
    assert status == 200 and body["version"] == 1
    first, missing, second = body["results"]
    # a user with no vector gets the most popular items at the same version, marked as such
    assert missing["fallback"] == "popular" and missing["user_vector"] == "none"
    assert missing["version"] == 1 and len(missing["items"]) == 3
    status, strict = http_json(
        "POST",
        f"{worker.api}/v1/recommendations/batch",
        {"user_ids": ["u1", "nobody"], "k": 3, "fallback": "none"},
    )
    assert status == 200 and strict["results"][1] is None
    assert first["user_id"] == "u1" and second["user_id"] == "u2"
    assert first["version"] == second["version"] == 1 and len(first["items"]) == 3
    status, single = _recommend(worker, "u1", "?k=3")
    assert status == 200 and single["items"] == first["items"]


def test_errors_are_clear(worker: WorkerProcess) -> None:
    status, body = _recommend(worker, "nobody", "?fallback=none")
    assert status == 404 and body["error"] == "not_found", body
    status, body = _recommend(worker, "u1", "?fallback=sometimes")
    assert status == 400 and body["error"] == "bad_fallback"
    status, body = _recommend(worker, "u1", "?k=0")
    assert status == 400 and body["error"] == "bad_k"
    status, body = _recommend(worker, "u1", "?version=7")
    assert status == 404 and body["error"] == "no_index", body
    status, body = _recommend(worker, "u1", "?exclude_seen=maybe")
    assert status == 400 and body["error"] == "bad_flag"
    _, health = http_json("GET", f"{worker.api}/healthz")
    index = health["item_indexes"]["1"]
    assert index["ready"] and not index["building"] and index["items"] >= ITEMS
    metrics = http_json("GET", f"{worker.api}/metrics")[1]
    assert 'embstream_item_index_items{version="1",segment="graph"}' in metrics
    assert 'embstream_recommendations_total{outcome="ok"}' in metrics


def test_a_restart_rebuilds_the_index_from_the_store(worker: WorkerProcess) -> None:
    before = {user: _recommend(worker, user, "?k=10")[1]["items"] for user in ("u1", "u7", "u20")}
    assert worker.stop() == 0
    worker.start()

    def rebuilt() -> dict | None:
        answers = {user: _recommend(worker, user, "?k=10") for user in before}
        if any(status != 200 for status, _ in answers.values()):
            return None
        return {user: body["items"] for user, (_, body) in answers.items()}

    after = wait_until(rebuilt, timeout_s=30)
    for user, items in before.items():
        assert [i["id"] for i in after[user]] == [i["id"] for i in items]
        assert [i["score"] for i in after[user]] == pytest.approx([i["score"] for i in items], abs=1e-5)
    assert "item index of version 1: built" in worker.log()


def test_the_cli_prints_recommendations(worker: WorkerProcess) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "stream.cli", "recommend", *args, "--api", worker.api]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    shown = cli("u1", "--k", "3")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["user_id"] == "u1" and len(body["items"]) == 3
    with_seen = json.loads(cli("u1", "--k", str(ITEMS + 10), "--include-seen").stdout)
    assert with_seen["excluded_seen"] == 0
    popular = cli("nobody")
    assert popular.returncode == 0 and json.loads(popular.stdout)["fallback"] == "popular"
    missing = cli("nobody", "--fallback", "none")
    assert missing.returncode == 1 and "no vector" in missing.stderr
