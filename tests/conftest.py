"""Shared fixtures: the real embedded broker (once per session) and factories for workers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web

from models.bootstrap import ensure_default_encoder
from models.registry import EncoderRegistry
from models.synthetic import SyntheticWorld
from models.versioning import VersionRequest, train_version
from stream.kafka.broker import EmbeddedBroker, free_port


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (Tansu) on a free loopback port."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding version 1 of the default encoder (trained once per session)."""
    root = tmp_path_factory.mktemp("registry")
    ensure_default_encoder(EncoderRegistry(root), seed=0)
    return root


@pytest.fixture(scope="session")
def swap_registry(trained_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 (the default encoder), v2 (bc-aligner child of v1), v3 (no aligner: fails the gate)."""
    root = tmp_path_factory.mktemp("swap") / "registry"
    shutil.copytree(trained_registry, root)
    registry = EncoderRegistry(root)
    world = SyntheticWorld(seed=0)
    events = world.events(12_000, start_ms=1_767_000_000_000, span_ms=86_400_000, seed=5)
    _, report = train_version(registry, events, VersionRequest(method="bc-aligner", epochs=1, seed=1))
    assert report["swappable"], report["consumer_change_pct"]
    train_version(registry, events, VersionRequest(method="none", epochs=1, seed=2))
    return root


@contextmanager
def serve_app(app: web.Application, **runner_options: Any) -> Iterator[str]:
    """``app`` on a loopback port, in a thread with its own event loop (so blocking clients
    can call it from the test's thread); yields its URL."""
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, **runner_options)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def http_json(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(
                raw
            ) if response.headers.get_content_type() == "application/json" else raw.decode()
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def read_topic(bootstrap: str, topic: str, idle_s: float = 1.5) -> list[Any]:
    """Every record of ``topic`` so far (kafka-python, manual assignment, no group)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False, group_id=None)
    try:
        partitions = wait_until(lambda: consumer.partitions_for_topic(topic), timeout_s=10)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: list[Any] = []
        last_new = time.monotonic()
        while time.monotonic() - last_new < idle_s:
            batch = consumer.poll(timeout_ms=200)
            for messages in batch.values():
                records.extend(messages)
                last_new = time.monotonic()
        return records
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, values: list[Any]) -> None:
    """Send events (dicts become JSON, bytes go as they are) keyed by user_id."""
    from stream.kafka.producer import send_records

    records = []
    for value in values:
        if isinstance(value, dict):
            records.append((str(value.get("user_id", "")).encode(), json.dumps(value).encode()))
        else:
            records.append((None, value))
    send_records([bootstrap], topic, records)


@dataclass
class WorkerProcess:
    """An ``embstream run`` child process against the session broker."""

    data_dir: Path
    registry: Path
    broker: str
    topic: str
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    #: How to start the command line: the package's, or a test's wrapper script around it.
    entry: list[str] = field(default_factory=lambda: ["-m", "stream.cli"])

    #: How long :meth:`start` waits for :meth:`_ready`.
    START_TIMEOUT_S: ClassVar[float] = 60.0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, wait: bool = True) -> WorkerProcess:
        """Start the worker; with ``wait``, return once it is ready (:meth:`_ready`)."""
        self.api_port = free_port()
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-worker-{self.api_port}.log"
        env = {
            **os.environ,
            "EMBSTREAM_GROUP_ID": f"group-{self.topic}",
            "EMBSTREAM_UPDATES_TOPIC": f"{self.topic}.updates",
            "EMBSTREAM_CONTROL_TOPIC": f"{self.topic}.control",
            **self._extra_env(),
            **self.env,
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self._cwd()
            )
        if wait:
            wait_until(self._ready, timeout_s=self.START_TIMEOUT_S)
        return self

    def _command(self) -> list[str]:
        """``embstream run`` against the session broker, on this worker's port and topic."""
        return [
            sys.executable,
            *self.entry,
            "run",
            "--broker",
            self.broker,
            "--data-dir",
            str(self.data_dir),
            "--registry",
            str(self.registry),
            "--api-port",
            str(self.api_port),
            "--topic",
            self.topic,
            *self.extra_args,
        ]

    def _extra_env(self) -> dict[str, str]:
        return {}

    def _cwd(self) -> Path | None:
        return None

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited early:\n{self.log()}")
        try:
            status, body = http_json("GET", f"{self.api}/healthz")
        except OSError:
            return False
        return status == 200 and bool(body["assigned_partitions"])

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:  # never leak a worker when a test fails
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def metric(self, name: str) -> float:
        _, text = http_json("GET", f"{self.api}/metrics", token=self.env.get("EMBSTREAM_API_TOKEN"))
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
def worker_factory(
    broker: EmbeddedBroker, trained_registry: Path, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(
        topic: str,
        data_dir: Path | None = None,
        extra_args: list[str] | None = None,
        registry: Path | None = None,
    ) -> WorkerProcess:
        worker = WorkerProcess(
            data_dir or tmp_path / f"data-{topic}",
            registry or trained_registry,
            broker.bootstrap,
            topic,
            extra_args or [],
        )
        started.append(worker)
        return worker.start()

    yield make
    for worker in started:
        if worker.process is not None:
            worker.stop()
