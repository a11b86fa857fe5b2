"""The Python client against a live worker (real broker, real RocksDB): its reads equal the
JSON API's, it waits out the 503s of a starting worker, a wrong token raises, and the
README's examples run as written."""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.registry import EncoderRegistry
from store.vector_store import VersionedVectorStore
from stream.client import Client, UnauthorizedError
from stream.kafka.broker import EmbeddedBroker
from tests.conftest import WorkerProcess, http_json, produce, wait_until
from tests.faults.streams import send_sentinels

pytestmark = pytest.mark.integration
TOPIC = "client-interactions"
TOKEN = "client-live-token"
README = Path(__file__).resolve().parents[2] / "README.md"


def _event(user: str, item: str) -> dict[str, object]:
    return {"user_id": user, "item_id": item, "type": "click", "ts": int(time.time() * 1000)}


@pytest.fixture(scope="module")
def worker(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    data = tmp_path_factory.mktemp("client") / "data"
    running = WorkerProcess(
        data, trained_registry, broker.bootstrap, TOPIC, env={"EMBSTREAM_API_TOKEN": TOKEN}
    )
    running.start()
    produce(broker.bootstrap, TOPIC, [_event(f"u{n % 20}", f"i{(n * 7) % 50}") for n in range(400)])
    for sentinel in send_sentinels(broker.bootstrap, TOPIC, 1):  # every partition applied
        url = f"{running.api}/v1/embeddings/user/{sentinel}"
        wait_until(lambda url=url: http_json("GET", url, token=TOKEN)[0] == 200, timeout_s=30)
    yield running
    if running.process is not None:
        assert running.stop() == 0, running.log()


def test_single_batch_and_pinned_reads_equal_the_json_api(worker: WorkerProcess) -> None:
    ids = [f"u{n}" for n in range(20)] + ["nobody", "u3"]
    status, expected = http_json("POST", f"{worker.api}/v1/embeddings/user/batch", {"ids": ids}, TOKEN)
    assert status == 200
    rows = [row for row in expected["results"] if row is not None]
    with Client(worker.api, token=TOKEN) as client:
        batch = client.get_many("user", ids)
        pinned = client.get_many("user", ids, version=expected["version"])
        one = client.get("user", "u3")
        top = client.recommend("u3", k=4)
        many = client.recommend_many(["u3", "nobody"], k=4, fallback="none")
        versions = client.versions()
    assert batch.version == pinned.version == expected["version"] == versions["serving_version"]
    assert batch.ids == [row["id"] for row in rows] and batch.missing == ["nobody"]
    assert np.array_equal(batch.vectors, np.array([row["vector"] for row in rows], dtype=np.float32))
    assert np.array_equal(pinned.vectors, batch.vectors)
    _, single = http_json("GET", f"{worker.api}/v1/embeddings/user/u3", token=TOKEN)
    assert np.array_equal(one.vector, np.asarray(single["vector"], dtype=np.float32))
    _, shown = http_json("GET", f"{worker.api}/v1/recommendations/u3?k=4", token=TOKEN)
    assert [(item.id, item.score) for item in top.items] == [(i["id"], i["score"]) for i in shown["items"]]
    assert many.results[1] is None and many.results[0] is not None
    assert [item.id for item in many.results[0].items] == [item.id for item in top.items]


def test_a_wrong_token_raises_the_unauthorized_error(worker: WorkerProcess) -> None:
    with Client(worker.api, token="not-the-token") as client, pytest.raises(UnauthorizedError) as refused:
        client.get("user", "u1")
    assert refused.value.status == 401 and refused.value.code == "unauthorized"


def test_the_readme_examples_run_against_a_live_worker(
    worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = README.read_text()
    start = text.index("## Python client")
    section = text[start : text.index("\n## ", start)]
    examples = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(examples) == 2
    monkeypatch.setenv("EMBSTREAM_API_TOKEN", TOKEN)
    outputs = []
    for code in examples:
        code = code.replace("http://127.0.0.1:8080", worker.api)
        if "AsyncClient(" in code:  # the second example: the worker asks for the token too
            code = code.replace(
                f'AsyncClient("{worker.api}")', f'AsyncClient("{worker.api}", token="{TOKEN}")'
            )
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
        outputs.append(printed.getvalue())
    assert "404 not_found" in outputs[0] and "['no-such-item']" in outputs[0]
    assert outputs[1].split()[:2] == ["1", "20"]  # version 1, u0..u19 found


def test_the_client_waits_out_a_starting_worker(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> None:
    """Recommendations answer 503 until the item index is built (here from 20,000 items in
    the store); a client with retries gets its answer, having been told 503 first."""
    dim = EncoderRegistry(trained_registry).manifest(1).dim
    store = VersionedVectorStore(tmp_path / "data")
    rng = np.random.default_rng(3)
    items = [f"item-{n}" for n in range(20_000)]
    writer = store.writer()
    writer.put_vectors("item", items, 1, rng.standard_normal((len(items), dim)).astype(np.float32), 1_000)
    writer.put_vectors("user", ["reader"], 1, rng.standard_normal((1, dim)).astype(np.float32), 1_000)
    writer.commit()
    store.set_serving_version(1)
    store.close()
    worker = WorkerProcess(tmp_path / "data", trained_registry, broker.bootstrap, "client-starting")
    with worker.start(wait=False):
        wait_until(lambda: _answers(worker.api), timeout_s=60)
        statuses: list[int] = []
        with Client(worker.api, retries=12, backoff_s=0.1) as client:
            exchange = client._exchange

            def seen(call: Any, timeout_s: float) -> Any:
                answer = exchange(call, timeout_s)
                statuses.append(answer[0])
                return answer

            client._exchange = seen  # type: ignore[method-assign]
            answer = client.recommend("reader", k=3)
        assert len(answer.items) == 3 and answer.user_vector == "native"
        assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses) == {503, 200}, statuses
        assert worker.metric('embstream_recommendations_total{outcome="index_building"}') >= 1
        assert worker.stop() == 0


def _answers(api: str) -> bool:
    with contextlib.suppress(OSError):
        return http_json("GET", f"{api}/healthz")[0] == 200
    return False
