"""The same events through peers, side by side: a raw consumer, faust-streaming and Quix Streams.

Pre-produces N synthetic events to a fresh topic on the embedded broker, then runs each peer in
its own subprocess, from the beginning of the topic with its own fresh consumer group, until it
has processed every event or its time budget is spent. Timing starts at the first record a peer
receives (group join excluded) and ends at the last event it processed. Writes JSON to stdout.

    python -m benchmarks.peers --events 100000

Peers (``--only`` takes a comma-separated subset):

- ``raw-aiokafka``: ``getmany`` plus ``orjson.loads`` of each value, nothing else (the ceiling).
- ``faust-noop``: a faust agent iterating the stream event by event and counting.
- ``faust-embstream``: a faust app with embstream attached (``stream.integrations.faust``):
  its agent applies batches through our write path (state, vectors, offsets in RocksDB),
  acknowledging them after the commit; the app's own work beside it is nothing.
- ``faust-naive``: a faust agent doing our worker's work per event, naively: parse, update the
  user and item state in faust tables, encode that user and that item at batch size 1, write
  both vectors to faust tables.
- ``quix-noop``: a Quix Streams pipeline counting events.
- ``quix-stateful``: parse and update the user's state in Quix's RocksDB state store (per key).
- ``quix-stateful+encode``: the same, plus encoding the user at batch size 1 and storing it.
- ``quix-stateful-eos``: ``quix-stateful`` with ``processing_guarantee="exactly-once"``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
import torch

from benchmarks.ingest import produce_events
from models.bootstrap import ensure_default_encoder
from models.encoder import TorchEncoder
from models.features import ItemState, UserState
from models.registry import EncoderRegistry
from models.synthetic import WORLDS
from stream.ingest.events import Rejection, parse_event
from stream.kafka.broker import EmbeddedBroker

__all__ = ["PEERS", "main", "run_peers"]

PEERS = (
    "raw-aiokafka",
    "faust-noop",
    "faust-embstream",
    "faust-naive",
    "quix-noop",
    "quix-stateful",
    "quix-stateful+encode",
    "quix-stateful-eos",
)
#: The embedded broker completes a group's first join after half the session timeout.
SESSION_TIMEOUT_S = 6.0
#: How long a peer may take to receive its first record (start-up, group join) on top of its budget.
STARTUP_ALLOWANCE_S = 60.0
MAX_FUTURE_SKEW_MS = 86_400_000
USER_WINDOW = 50


# --- counting: shared by every peer --------------------------------------------------------


@dataclass
class EventBudget:
    """Counts processed events from the first record received; done at ``events`` or ``seconds``.

    Also done when no record came within ``STARTUP_ALLOWANCE_S`` of its creation.
    """

    events: int
    seconds: float
    created: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None
    count: int = 0
    rejected: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def start_once(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def add(self, processed: int = 1) -> bool:
        """Record ``processed`` more events; True once the run should stop."""
        self.count += processed
        self.finished = time.perf_counter()
        return self.done()

    def done(self) -> bool:
        if self.count >= self.events:
            return True
        if self.started is None:
            return time.perf_counter() - self.created >= STARTUP_ALLOWANCE_S
        return time.perf_counter() - self.started >= self.seconds

    def result(self) -> dict[str, Any]:
        if self.started is None or self.finished is None or self.count == 0:
            return {"events": 0, "seconds": 0.0, "events_per_second": 0, "note": self._nothing_received()}
        elapsed = max(self.finished - self.started, 1e-9)
        if self.count >= self.events:
            note = f"all {self.count:,} events"
        else:
            note = f"time budget reached after {self.count:,} events"
        if self.rejected:
            note += f" ({self.rejected:,} rejected by parse_event)"
        return {
            "events": self.count,
            "seconds": round(elapsed, 3),
            "events_per_second": round(self.count / elapsed),
            "note": note,
            **self.extra,
        }

    def _nothing_received(self) -> str:
        return f"no event received within {time.perf_counter() - self.created:.0f} s"


@dataclass(frozen=True)
class PeerJob:
    """What a peer subprocess is told: where to read, how much, where to write its result."""

    peer: str
    bootstrap: str
    topic: str
    events: int
    partitions: int
    registry: Path
    work_dir: Path
    time_budget_s: float
    result_path: Path
    torch_threads: int = 0  # 0: torch's default (as our worker runs)

    @cached_property
    def group_id(self) -> str:
        """A fresh consumer group (so the peer starts from the beginning), fixed per job."""
        return f"bench-{self.peer.replace('+', '-')}-{uuid.uuid4().hex[:8]}"

    def to_argv(self) -> list[str]:
        return [
            "--child",
            self.peer,
            "--bootstrap",
            self.bootstrap,
            "--topic",
            self.topic,
            "--events",
            str(self.events),
            "--partitions",
            str(self.partitions),
            "--registry",
            str(self.registry),
            "--work-dir",
            str(self.work_dir),
            "--time-budget",
            str(self.time_budget_s),
            "--result",
            str(self.result_path),
            "--torch-threads",
            str(self.torch_threads),
        ]


def _write_result(job: PeerJob, budget: EventBudget) -> None:
    job.result_path.write_bytes(orjson.dumps(budget.result()))


def _load_encoder(registry: Path, torch_threads: int) -> TorchEncoder:
    """The latest (default: v1) encoder, loaded as the worker loads it (sha256 checked)."""
    if torch_threads:
        torch.set_num_threads(torch_threads)
    store = EncoderRegistry(registry)
    version = store.latest()
    if version is None:
        raise SystemExit(f"the registry at {registry} is empty")
    return store.load(version)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- raw aiokafka: the delivery ceiling ------------------------------------------------------


async def _raw_aiokafka(job: PeerJob) -> EventBudget:
    from aiokafka import AIOKafkaConsumer

    budget = EventBudget(job.events, job.time_budget_s)
    consumer = AIOKafkaConsumer(
        job.topic,
        bootstrap_servers=job.bootstrap,
        group_id=job.group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
        heartbeat_interval_ms=1000,  # fetch sizes left at aiokafka's defaults
    )
    await consumer.start()
    try:
        while not budget.done():
            fetched = await consumer.getmany(timeout_ms=500, max_records=20_000)
            if not fetched:
                continue
            budget.start_once()
            parsed = [orjson.loads(m.value) for messages in fetched.values() for m in messages]
            budget.extra.setdefault("first_batch", len(parsed))  # fetched before the clock started
            budget.add(len(parsed))
    finally:
        await consumer.stop()
    return budget


def run_raw_aiokafka(job: PeerJob) -> None:
    _write_result(job, asyncio.run(_raw_aiokafka(job)))


# --- faust-streaming ---------------------------------------------------------------------------


def _faust_app(job: PeerJob, store: str) -> Any:
    import faust

    return faust.App(
        job.group_id,
        broker=f"kafka://{job.bootstrap}",
        store=store,
        datadir=str(job.work_dir / "faust"),
        web_enabled=False,
        topic_partitions=job.partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=1.0,
    )


def _stop_faust_when_done(job: PeerJob, budget: EventBudget) -> None:
    """Write the result, then stop the worker as SIGTERM would (gracefully)."""
    _write_result(job, budget)
    os.kill(os.getpid(), signal.SIGTERM)


class NaiveFaustWork:
    """Our worker's per-event work, one event at a time, with state and vectors in faust tables."""

    def __init__(self, app: Any, encoder: TorchEncoder) -> None:
        tables = {"key_type": bytes, "value_type": bytes}  # raw bytes in the store and changelog
        self.user_states = app.Table("user-state", **tables)
        self.item_states = app.Table("item-state", **tables)
        self.user_vectors = app.Table("user-vector", **tables)
        self.item_vectors = app.Table("item-vector", **tables)
        self.encoder = encoder

    def apply(self, value: bytes, broker_ts_ms: int) -> bool:
        """Apply one event; False when it is rejected."""
        event = parse_event(value, broker_ts_ms, _now_ms(), MAX_FUTURE_SKEW_MS)
        if isinstance(event, Rejection):
            return False
        user_key, item_key = event.user_id.encode(), event.item_id.encode()
        user = self._user_state(user_key)
        user.add(event.item_id, event.type_code, event.value, event.ts_ms)
        item = self._item_state(item_key)
        item.add(event.type_code, event.ts_ms)
        self.user_states[user_key] = user.to_bytes()
        self.item_states[item_key] = item.to_bytes()
        user_vector = self.encoder.encode_users([user.to_input(event.user_id)])[0]
        item_vector = self.encoder.encode_items([item.to_input(event.item_id)])[0]
        self.user_vectors[user_key] = user_vector.tobytes()
        self.item_vectors[item_key] = item_vector.tobytes()
        return True

    def _user_state(self, key: bytes) -> UserState:
        raw = self.user_states.get(key)
        return UserState(window=USER_WINDOW) if raw is None else UserState.from_bytes(raw, USER_WINDOW)

    def _item_state(self, key: bytes) -> ItemState:
        raw = self.item_states.get(key)
        return ItemState() if raw is None else ItemState.from_bytes(raw)


def run_faust(job: PeerJob, naive: bool) -> None:
    from faust.worker import Worker

    app = _faust_app(job, store="rocksdb://" if naive else "memory://")
    budget = EventBudget(job.events, job.time_budget_s, extra={"table_store": "rocksdb"} if naive else {})
    topic = app.topic(
        job.topic, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw"
    )
    work = NaiveFaustWork(app, _load_encoder(job.registry, job.torch_threads)) if naive else None
    if naive:
        budget.extra["torch_threads"] = torch.get_num_threads()

    @app.agent(topic)
    async def consume(stream: Any) -> None:
        async for value in stream:
            budget.start_once()
            if work is not None and not work.apply(value, int(stream.current_event.message.timestamp * 1000)):
                budget.rejected += 1
            if budget.add():
                _stop_faust_when_done(job, budget)
                return

    @app.timer(1.0)
    async def watch_budget() -> None:  # an idle stream never reaches the agent's own check
        if budget.done() and not job.result_path.exists():
            _stop_faust_when_done(job, budget)

    Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def run_faust_embstream(job: PeerJob) -> None:
    """A faust app with embstream attached: events are counted as its agent applies them."""
    from faust.worker import Worker

    from stream.integrations.faust import attach

    app = _faust_app(job, store="memory://")
    app.conf.web_enabled = False  # the API is not measured here
    budget = EventBudget(job.events, job.time_budget_s)
    refresher = attach(
        app,
        topic=job.topic,
        data_dir=job.work_dir / "data",
        registry=job.registry,
        updates_topic=f"{job.topic}.faust-updates",
        control_topic=f"{job.topic}.faust-control",
        torch_threads=job.torch_threads or torch.get_num_threads(),
    )
    applying = refresher.apply

    async def counted(messages: list[Any]) -> bool:
        budget.start_once()
        applied = await applying(messages)
        if budget.add(len(messages)):
            _stop_faust_when_done(job, budget)
        return applied

    refresher.apply = counted  # type: ignore[method-assign]

    @app.timer(1.0)
    async def watch_budget() -> None:
        if budget.done() and not job.result_path.exists():
            _stop_faust_when_done(job, budget)

    Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


# --- Quix Streams ------------------------------------------------------------------------------


def _dump_state(value: Any) -> bytes:
    """Quix state values: our bytes as they are (the default is JSON, which refuses bytes)."""
    return value if isinstance(value, bytes) else orjson.dumps(value)


def _load_state(raw: bytes) -> bytes:
    return raw


def _quix_app(job: PeerJob, exactly_once: bool) -> Any:
    from quixstreams import Application
    from quixstreams.state.rocksdb import RocksDBOptions

    return Application(
        broker_address=job.bootstrap,
        consumer_group=job.group_id,
        auto_offset_reset="earliest",
        state_dir=str(job.work_dir / "quix-state"),
        rocksdb_options=RocksDBOptions(dumps=_dump_state, loads=_load_state),
        consumer_extra_config={
            "session.timeout.ms": int(SESSION_TIMEOUT_S * 1000),
            "heartbeat.interval.ms": 1000,
        },
        processing_guarantee="exactly-once" if exactly_once else "at-least-once",
        loglevel="WARNING",
    )


def _user_state_step(encoder: TorchEncoder | None, budget: EventBudget) -> Callable[..., None]:
    """Per event: parse, update the key's ``UserState`` bytes, optionally encode and store the user."""

    def step(value: bytes, key: bytes, timestamp: int, headers: Any, state: Any) -> None:
        event = parse_event(value, timestamp, _now_ms(), MAX_FUTURE_SKEW_MS)
        if isinstance(event, Rejection):
            budget.rejected += 1
            return
        raw = state.get("user")
        user = UserState(window=USER_WINDOW) if raw is None else UserState.from_bytes(raw, USER_WINDOW)
        user.add(event.item_id, event.type_code, event.value, event.ts_ms)
        state.set("user", user.to_bytes())
        if encoder is not None:
            vector = encoder.encode_users([user.to_input(event.user_id)])[0]
            state.set("vector", vector.tobytes())

    return step


def run_quix(job: PeerJob, *, stateful: bool, encode: bool, exactly_once: bool) -> None:
    app = _quix_app(job, exactly_once)
    budget = EventBudget(job.events, job.time_budget_s)
    topic = app.topic(job.topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    encoder = _load_encoder(job.registry, job.torch_threads) if encode else None
    step = _user_state_step(encoder, budget) if stateful else None
    if encode:
        budget.extra["torch_threads"] = torch.get_num_threads()

    def count(value: bytes, key: bytes, timestamp: int, headers: Any, state: Any = None) -> None:
        budget.start_once()
        if step is not None:
            step(value, key, timestamp, headers, state)
        if budget.add():
            app.stop()

    sdf.update(count, stateful=stateful, metadata=True)
    app.run(timeout=STARTUP_ALLOWANCE_S)  # Quix stops once idle this long (our budget stops it first)
    _write_result(job, budget)


# --- running the peers -------------------------------------------------------------------------


def run_child(job: PeerJob) -> None:
    """Run one peer in this process (called in the subprocess)."""
    runners: dict[str, Callable[[], None]] = {
        "raw-aiokafka": lambda: run_raw_aiokafka(job),
        "faust-noop": lambda: run_faust(job, naive=False),
        "faust-naive": lambda: run_faust(job, naive=True),
        "faust-embstream": lambda: run_faust_embstream(job),
        "quix-noop": lambda: run_quix(job, stateful=False, encode=False, exactly_once=False),
        "quix-stateful": lambda: run_quix(job, stateful=True, encode=False, exactly_once=False),
        "quix-stateful+encode": lambda: run_quix(job, stateful=True, encode=True, exactly_once=False),
        "quix-stateful-eos": lambda: run_quix(job, stateful=True, encode=False, exactly_once=True),
    }
    runners[job.peer]()


def _last_lines(text: str, count: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


def run_peer_subprocess(job: PeerJob) -> dict[str, Any]:
    """One peer in a fresh interpreter; its result, or why it produced none.

    The peer's own output goes to ``log.txt`` in its work directory; ``wall_seconds`` is the
    whole subprocess (imports, group join, shutdown), beside the timed part.
    """
    job.work_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "benchmarks.peers", *job.to_argv()]
    timeout = STARTUP_ALLOWANCE_S + job.time_budget_s + 30.0
    log_path = job.work_dir / "log.txt"
    launched = time.perf_counter()
    with log_path.open("w") as log:
        try:
            finished = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
            outcome = f"exit {finished.returncode}"
        except subprocess.TimeoutExpired:
            outcome = f"killed after {timeout:.0f} s"
    wall = {"wall_seconds": round(time.perf_counter() - launched, 1)}
    if job.result_path.exists():
        return {**json.loads(job.result_path.read_text()), **wall}
    reason = _last_lines(log_path.read_text()) or "no output"
    return {
        "events": 0,
        "seconds": 0.0,
        "events_per_second": 0,
        "note": f"failed ({outcome}): {reason}",
        **wall,
    }


def run_peers(
    bootstrap: str,
    topic: str,
    events: int,
    *,
    partitions: int,
    registry: Path,
    work_dir: Path,
    time_budget_s: float = 60.0,
    only: set[str] | None = None,
    torch_threads: int = 0,
) -> dict[str, dict[str, Any]]:
    """Run each peer (all of ``PEERS``, or ``only`` those) on ``topic``, one after another.

    ``events`` is how many events the topic holds; ``registry`` must hold an encoder (the
    default v1 from :func:`models.bootstrap.ensure_default_encoder`). ``torch_threads=0`` leaves
    torch's default thread count, as our worker does.
    """
    unknown = (only or set()) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peers: {', '.join(sorted(unknown))}; known: {', '.join(PEERS)}")
    results: dict[str, dict[str, Any]] = {}
    for peer in PEERS:
        if only is not None and peer not in only:
            continue
        peer_dir = work_dir / peer.replace("+", "-")
        job = PeerJob(
            peer=peer,
            bootstrap=bootstrap,
            topic=topic,
            events=events,
            partitions=partitions,
            registry=registry,
            work_dir=peer_dir,
            time_budget_s=time_budget_s,
            result_path=peer_dir / "result.json",
            torch_threads=torch_threads,
        )
        results[peer] = run_peer_subprocess(job)
        print(f"{peer}: {results[peer]}", file=sys.stderr, flush=True)
    return results


# --- command line ------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--time-budget", type=float, default=60.0, help="seconds per peer after its first record"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch.set_num_threads for encoding peers (0: default)"
    )
    parser.add_argument(
        "--keep-work-dir", action="store_true", help="keep the peers' logs and state (printed to stderr)"
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(PEERS)}")
    parser.add_argument(
        "--world", choices=sorted(WORLDS), default="small", help="whose events (models.synthetic.WORLDS)"
    )
    # The subprocess side (internal): run one peer against a given broker and topic.
    parser.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--registry", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _child_job(args: argparse.Namespace) -> PeerJob:
    return PeerJob(
        args.child,
        args.bootstrap,
        args.topic,
        args.events,
        args.partitions,
        args.registry,
        args.work_dir,
        args.time_budget,
        args.result,
        args.torch_threads,
    )


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.child:
        run_child(_child_job(args))
        return
    only = {name.strip() for name in args.only.split(",")} if args.only else None
    work = Path(tempfile.mkdtemp(prefix="embstream-peers-"))
    registry = work / "registry"
    ensure_default_encoder(EncoderRegistry(registry))
    with EmbeddedBroker() as broker:
        topic = "bench-interactions"
        produce_seconds = produce_events(broker.bootstrap, topic, args.events, args.partitions, args.world)
        results = run_peers(
            broker.bootstrap,
            topic,
            args.events,
            partitions=args.partitions,
            registry=registry,
            work_dir=work,
            time_budget_s=args.time_budget,
            only=only,
            torch_threads=args.torch_threads,
        )
    summary = {
        "events_produced": args.events,
        "partitions": args.partitions,
        "world": args.world,
        "time_budget_s": args.time_budget,
        "produce_seconds": round(produce_seconds, 2),
        "cores": os.cpu_count(),
        "peers": results,
    }
    print(json.dumps(summary, indent=2))
    if args.keep_work_dir:
        print(f"work directory kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
