"""Event helpers shared by the fault scenarios: keyed events, sentinels, exact counts."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from models.features import UserState
from models.registry import EncoderRegistry
from models.state_batch import apply_user_events
from store.vector_store import VersionedVectorStore
from tests.conftest import WorkerProcess, http_json, wait_until


def events(users: int, count: int, start: int, prefix: str = "r") -> list[dict]:
    now = int(time.time() * 1000)
    return [
        {"user_id": f"{prefix}{(start + n) % users}", "item_id": f"it{n % 17}", "type": "view", "ts": now}
        for n in range(count)
    ]


def send_sentinels(bootstrap: str, topic: str, round_: int, partitions: int = 4) -> list[str]:
    """One event per partition, so that its arrival proves everything before it was applied."""
    producer = KafkaProducer(bootstrap_servers=[bootstrap])
    names = []
    for partition in range(partitions):
        name = f"sentinel-{round_}-{partition}"
        body = {"user_id": name, "item_id": "s", "type": "view", "ts": int(time.time() * 1000)}
        producer.send(topic, json.dumps(body).encode(), key=name.encode(), partition=partition)
        names.append(name)
    producer.flush()
    producer.close()
    return names


def wait_users(worker: WorkerProcess, names: list[str], timeout_s: float = 60) -> None:
    for name in names:
        wait_until(
            lambda n=name: http_json("GET", f"{worker.api}/v1/embeddings/user/{n}")[0] == 200,
            timeout_s=timeout_s,
        )


def stored_counts(data_dir: Path, users: list[str]) -> dict[str, int]:
    """Each user's lifetime interaction count as the store holds it (0: no state)."""
    store = VersionedVectorStore(data_dir, read_only=True)
    try:
        return {
            uid: 0 if raw is None else UserState.from_bytes(raw).count
            for uid, raw in zip(users, store.get_states("user", users), strict=True)
        }
    finally:
        store.close()


def vectors_match_states(
    data_dir: Path, registry: Path, users: list[str], window: int = 50, version: int = 1
) -> int:
    """How many users' stored vectors of ``version`` differ from their stored state encoded
    afresh by that version's encoder (0 when every one was recomputed from the final state)."""
    encoder = EncoderRegistry(registry).load(version)
    store = VersionedVectorStore(data_dir, read_only=True)
    try:
        states = store.get_states("user", users)
        records = store.get_records("user", users)
    finally:
        store.close()
    _, histories = apply_user_events(users, states, window)
    expected = encoder.encode_users(histories)
    stale = 0
    for row, record in enumerate(records):
        held = None if record is None else next((e.vector for e in record if e.version == version), None)
        if held is None or not np.allclose(held, expected[row], atol=1e-5):
            stale += 1
    return stale


def expected_counts(produced: list[dict]) -> Counter[str]:
    return Counter(str(event["user_id"]) for event in produced)
