"""Freshness against load: from an event's timestamp to its refreshed vector being readable.

    python -m benchmarks.freshness --out benchmarks/results/freshness.json \
        --plot benchmarks/results/freshness.png [--world small|real]

For each rate (5k, 10k, 20k, 30k, 40k events/s by default) a fresh worker process is started
exactly as users start one (``python -m stream.cli run`` with ``EMBSTREAM_*`` settings) on
its own topics and data directory, against one embedded broker. A paced producer process
(``benchmarks.paced_producer``) sends synthetic events stamped at send time. This process
consumes the worker's updates topic: the worker publishes an update only after the RocksDB
commit, so a vector is readable once its update exists, and each update's freshness is
``arrival wall-clock ms - event_ts``. Updates whose event was sent in the first
``WARMUP_SECONDS`` are discarded. A sample of user updates is also read back through the
lookup API the moment it arrives, to confirm the API already returns that write.

Clock basis: every process runs on this machine and stamps with the wall clock
(``time.time``) in milliseconds, so no cross-host skew enters the figures.

The input backlog (end offsets of the interactions topic minus the worker's consumed count)
is sampled twice a second; a rate is "saturated" when it grows by more than 5 % of the rate,
and higher rates are then skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.bootstrap import ensure_default_encoder
from models.registry import EncoderRegistry
from models.synthetic import WORLDS
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.kafka.topics import ensure_topics

__all__ = ["plot_freshness", "run_freshness"]

DEFAULT_RATES = (5_000, 10_000, 20_000, 30_000, 40_000)
TARGET_P99_MS = 500.0
WARMUP_SECONDS = 3.0
SPOT_CHECKS = 50
PARTITIONS = 4
BACKLOG_SAMPLE_SECONDS = 0.5
SATURATION_GROWTH = 0.05  # backlog growing by more than this fraction of the rate
PRODUCER_SHORTFALL = 0.95  # achieved below this fraction of the requested rate
DRAIN_SECONDS = 10.0
STARTUP_SECONDS = 90.0
CLOCK_BASIS = (
    "wall clock (time.time) in ms; producer, worker and measuring process on one machine; "
    "freshness = arrival of the update message at the measuring consumer - event_ts"
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- child processes -------------------------------------------------------------------


class ChildProcesses:
    """Every process this benchmark starts; all are stopped on exit, whatever the exit."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
            )
        self.processes.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
        self.processes.clear()

    def __enter__(self) -> ChildProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@dataclass(frozen=True)
class RunLayout:
    """Names and paths of one rate's run: its own topics, group, data directory and logs."""

    rate: int
    work_dir: Path
    world: str = "small"  # whose events the producer sends (models.synthetic.WORLDS)

    @property
    def name(self) -> str:
        return f"fresh-{self.rate}-{os.getpid()}"

    @property
    def interactions(self) -> str:
        return f"{self.name}.interactions"

    @property
    def updates(self) -> str:
        return f"{self.name}.updates"

    @property
    def run_dir(self) -> Path:
        path = self.work_dir / f"rate-{self.rate}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def worker_environment(layout: RunLayout, broker: str, registry: Path, api_port: int) -> dict[str, str]:
    """The ``EMBSTREAM_*`` settings of one run's worker."""
    return {
        **os.environ,
        "EMBSTREAM_BROKER": broker,
        "EMBSTREAM_DATA_DIR": str(layout.run_dir / "data"),
        "EMBSTREAM_REGISTRY": str(registry),
        "EMBSTREAM_API_PORT": str(api_port),
        "EMBSTREAM_TOPIC": layout.interactions,
        "EMBSTREAM_UPDATES_TOPIC": layout.updates,
        "EMBSTREAM_CONTROL_TOPIC": f"{layout.name}.control",
        "EMBSTREAM_GROUP_ID": f"{layout.name}.group",
        "EMBSTREAM_PARTITIONS": str(PARTITIONS),
    }


def start_worker(
    children: ChildProcesses, layout: RunLayout, broker: str, registry: Path, api_port: int
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "stream.cli", "run"]
    env = worker_environment(layout, broker, registry, api_port)
    return children.start(command, layout.run_dir / "worker.log", env)


def start_producer(
    children: ChildProcesses, layout: RunLayout, broker: str, seconds: float
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.paced_producer",
        "--broker",
        broker,
        "--topic",
        layout.interactions,
        "--rate",
        str(layout.rate),
        "--seconds",
        str(seconds),
        "--partitions",
        str(PARTITIONS),
        "--world",
        layout.world,
    ]
    return children.start(command, layout.run_dir / "producer.log", dict(os.environ))


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def check_alive(process: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    if process.poll() is not None and process.returncode != 0:
        raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_tail(log_path)}")


async def wait_for_worker(
    session: aiohttp.ClientSession, api: str, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    """Until the worker's API answers and its consumer owns partitions."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited early:\n{log_tail(log_path)}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{api}/healthz") as response:
                if response.status == 200 and (await response.json())["assigned_partitions"]:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the worker was not ready within {STARTUP_SECONDS:.0f} s:\n{log_tail(log_path)}")


async def producer_line(process: subprocess.Popen[bytes], log_path: Path, key: str) -> dict[str, Any]:
    """The producer's JSON line holding ``key``, once it is written."""
    while True:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and key in line:
                return dict(json.loads(line))
        if process.poll() is not None:
            raise RuntimeError(f"the producer exited without {key!r}:\n{log_tail(log_path)}")
        await asyncio.sleep(0.05)


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of a process so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(pids: dict[str, int], before: dict[str, float | None]) -> dict[str, float | None]:
    """CPU seconds each process used since ``before`` was taken."""
    used: dict[str, float | None] = {}
    for name, pid in pids.items():
        now, then = cpu_seconds(pid), before.get(name)
        used[name] = None if now is None or then is None else round(now - then, 2)
    return used


# --- what the measuring process observes -----------------------------------------------


@dataclass
class UpdateLog:
    """Every update message seen: its event time, write time and arrival time."""

    event_ts: list[int] = field(default_factory=list)
    written_at: list[int] = field(default_factory=list)
    arrival_ms: list[int] = field(default_factory=list)

    def add(self, update: dict[str, Any], arrival: int) -> None:
        self.event_ts.append(int(update["event_ts"]))
        self.written_at.append(int(update["ts"]))
        self.arrival_ms.append(arrival)

    def newest_event_ts(self) -> int:
        return max(self.event_ts, default=0)


@dataclass
class SpotChecker:
    """Reads a sample of user updates back through the lookup API as soon as they arrive.

    Checks are spread over the measured window: by any arrival time, the number started
    keeps up with that share of ``SPOT_CHECKS`` (updates arrive in bursts, one per batch).
    """

    session: aiohttp.ClientSession
    api: str
    from_ms: int
    window_ms: int
    results: list[tuple[bool, float]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    started: int = 0

    def offer(self, update: dict[str, Any], arrival: int) -> None:
        if update["kind"] != "user" or update["event_ts"] < self.from_ms:
            return
        due = min(SPOT_CHECKS, 1 + SPOT_CHECKS * (arrival - self.from_ms) // self.window_ms)
        if self.started >= due:
            return
        self.started += 1
        task = asyncio.create_task(self.check(update["id"], int(update["ts"])))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def check(self, user_id: str, written_at: int) -> None:
        started = time.perf_counter()
        try:
            async with self.session.get(f"{self.api}/v1/embeddings/user/{user_id}") as response:
                body = await response.json() if response.status == 200 else {}
        except aiohttp.ClientError:
            body = {}
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.results.append((int(body.get("updated_at", -1)) >= written_at, elapsed_ms))

    async def finish(self) -> None:
        await asyncio.gather(*self.tasks)

    def summary(self) -> dict[str, Any]:
        confirmed = sum(ok for ok, _ in self.results)
        checked = len(self.results)
        return {
            "checked": checked,
            "confirmed": confirmed,
            "fraction": round(confirmed / checked, 3) if checked else None,
            "get_p50_ms": round(float(np.median([ms for _, ms in self.results])), 2) if checked else None,
        }


async def consume_updates(consumer: AIOKafkaConsumer, log: UpdateLog, checker: SpotChecker) -> None:
    """Record every update with the wall-clock time its fetch returned; runs until cancelled."""
    while True:
        fetched = await consumer.getmany(timeout_ms=20, max_records=20_000)
        arrival = now_ms()
        for messages in fetched.values():
            for message in messages:
                update = orjson.loads(message.value)
                log.add(update, arrival)
                checker.offer(update, arrival)


@dataclass
class BacklogSampler:
    """Events sent to the input topic and events the worker consumed, sampled over time."""

    consumer: AIOKafkaConsumer
    session: aiohttp.ClientSession
    api: str
    partitions: list[TopicPartition]
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # (wall ms, sent, consumed)

    async def sample(self) -> int:
        """Take one sample; returns the backlog (sent but not consumed yet)."""
        ends = await self.consumer.end_offsets(self.partitions)
        async with self.session.get(f"{self.api}/healthz") as response:
            consumed = int((await response.json())["events_consumed"])
        self.samples.append((now_ms(), sum(ends.values()), consumed))
        return max(0, sum(ends.values()) - consumed)  # the two reads race by a few events

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(BACKLOG_SAMPLE_SECONDS)

    def slopes(self, from_ms: int, to_ms: int) -> tuple[float, float]:
        """Backlog growth and consumption rate between two wall-clock times (least squares), per s."""
        window = [sample for sample in self.samples if from_ms <= sample[0] <= to_ms]
        if len(window) < 3:
            return 0.0, float("nan")
        times, sent, consumed = np.array(window, dtype=float).T
        growth = np.polyfit(times / 1000.0, sent - consumed, 1)[0]
        consumption = np.polyfit(times / 1000.0, consumed, 1)[0]
        return float(growth), float(consumption)

    def backlog_trace(self, origin_ms: int) -> list[tuple[float, int]]:
        """(seconds since ``origin_ms``, backlog) about once a second, for the record."""
        step = max(1, round(1.0 / BACKLOG_SAMPLE_SECONDS))
        return [
            (round((t - origin_ms) / 1000, 1), max(0, sent - consumed))
            for t, sent, consumed in self.samples[::step]
        ]


# --- one rate --------------------------------------------------------------------------


def latency_summary(log: UpdateLog, from_ms: int, to_ms: int) -> dict[str, Any]:
    """Percentiles of ``arrival - event_ts`` for updates of events sent in ``[from_ms, to_ms]``."""
    event_ts = np.array(log.event_ts, dtype=np.int64)
    arrival = np.array(log.arrival_ms, dtype=np.int64)
    written = np.array(log.written_at, dtype=np.int64)
    chosen = (event_ts >= from_ms) & (event_ts <= to_ms)
    if not chosen.any():
        return {"count": 0}
    latency = arrival[chosen] - event_ts[chosen]
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    return {
        "count": int(chosen.sum()),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": int(latency.max()),
        "written_at_to_arrival_p50_ms": round(float(np.median(arrival[chosen] - written[chosen])), 1),
        "oldest_in_batch_p99_ms": oldest_in_batch_p99(event_ts[chosen], written[chosen], arrival[chosen]),
    }


def oldest_in_batch_p99(event_ts: np.ndarray, written: np.ndarray, arrival: np.ndarray) -> float:
    """p99 over batches of (last arrival - oldest update event_ts in the batch).

    An update carries the newest event of its entity in the batch, so per-update figures
    understate older events of a popular entity by up to the batch's time span; this is
    the conservative bound (a batch is identified by its write time).
    """
    order = np.argsort(written, kind="stable")
    written, event_ts, arrival = written[order], event_ts[order], arrival[order]
    starts = np.flatnonzero(np.diff(written, prepend=written[0] - 1))
    oldest = np.minimum.reduceat(event_ts, starts)
    latest_arrival = np.maximum.reduceat(arrival, starts)
    return round(float(np.percentile(latest_arrival - oldest, 99)), 1)


async def drain(log: UpdateLog, last_event_ts: int, worker: subprocess.Popen[bytes], log_path: Path) -> bool:
    """Wait until the updates of the last events sent have arrived; False on timeout."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline:
        check_alive(worker, "the worker", log_path)
        if log.newest_event_ts() >= last_event_ts:
            return True
        await asyncio.sleep(0.05)
    return False


async def updates_consumer(broker: str, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    return consumer


@dataclass
class RunContext:
    """One run's worker, its API and the broker, as the measuring process sees them."""

    layout: RunLayout
    broker: str
    broker_pid: int
    session: aiohttp.ClientSession
    api: str
    worker: subprocess.Popen[bytes]

    @property
    def worker_log(self) -> Path:
        return self.layout.run_dir / "worker.log"

    def process_ids(self) -> dict[str, int]:
        return {"worker": self.worker.pid, "broker": self.broker_pid, "measuring": os.getpid()}


async def measure_rate(
    layout: RunLayout, broker: EmbeddedBroker, registry: Path, seconds: float, children: ChildProcesses
) -> dict[str, Any]:
    """One run at ``layout.rate``: a fresh worker on fresh topics, stopped afterwards."""
    assert broker.process is not None
    for topic in (layout.interactions, layout.updates):
        await asyncio.to_thread(ensure_topics, [broker.bootstrap], {topic: PARTITIONS})
    api_port = free_port()
    worker = start_worker(children, layout, broker.bootstrap, registry, api_port)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            api = f"http://127.0.0.1:{api_port}"
            run = RunContext(layout, broker.bootstrap, broker.process.pid, session, api, worker)
            await wait_for_worker(session, run.api, worker, run.worker_log)
            consumer = await updates_consumer(broker.bootstrap, layout.updates)
            try:
                return await observe_run(run, consumer, seconds, children)
            finally:
                await consumer.stop()
    finally:
        ChildProcesses.stop(worker)


async def observe_run(
    run: RunContext, consumer: AIOKafkaConsumer, seconds: float, children: ChildProcesses
) -> dict[str, Any]:
    """Start the producer, record updates, backlog and spot checks until the last events land."""
    layout = run.layout
    producer = start_producer(children, layout, run.broker, seconds)
    producer_log = layout.run_dir / "producer.log"
    started_ms = int((await producer_line(producer, producer_log, "started_ms"))["started_ms"])
    cpu_before = {name: cpu_seconds(pid) for name, pid in run.process_ids().items()}
    from_ms = started_ms + int(WARMUP_SECONDS * 1000)
    checker = SpotChecker(run.session, run.api, from_ms, int((seconds - WARMUP_SECONDS) * 1000))
    log = UpdateLog()
    partitions = [TopicPartition(layout.interactions, p) for p in range(PARTITIONS)]
    sampler = BacklogSampler(consumer, run.session, run.api, partitions)
    tasks = [
        asyncio.create_task(consume_updates(consumer, log, checker)),
        asyncio.create_task(sampler.run()),
    ]
    try:
        report = await producer_line(producer, producer_log, "achieved_rate")
        cpu = {**cpu_used(run.process_ids(), cpu_before), "producer": report["cpu_seconds"]}
        check_alive(run.worker, "the worker", run.worker_log)
        last_ts = int(report["last_ts"])
        growth, consumption = sampler.slopes(from_ms, last_ts)
        saturated = growth > SATURATION_GROWTH * float(report["achieved_rate"])
        drained = False if saturated else await drain(log, last_ts, run.worker, run.worker_log)
        backlog_at_end = await sampler.sample()
        await checker.finish()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "requested_rate": layout.rate,
        "achieved_rate": round(float(report["achieved_rate"])),
        "events_sent": int(report["sent"]),
        "producer_limited": float(report["achieved_rate"]) < PRODUCER_SHORTFALL * layout.rate,
        **latency_summary(log, from_ms, last_ts),
        "saturated": saturated,
        "drained": drained,
        "backlog_growth_events_per_s": round(growth),
        "worker_consumed_per_s": round(consumption),
        "backlog_at_end": backlog_at_end,
        "backlog_trace": sampler.backlog_trace(started_ms),
        "api_spot_check": checker.summary(),
        "cpu_seconds_while_sending": cpu,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


# --- all rates -------------------------------------------------------------------------


def describe(run: dict[str, Any]) -> str:
    if run.get("count", 0) == 0:
        return f"{run['achieved_rate']:>6} ev/s: no updates measured"
    state = f" SATURATED (backlog +{run['backlog_growth_events_per_s']}/s)" if run["saturated"] else ""
    return (
        f"{run['achieved_rate']:>6} ev/s (asked {run['requested_rate']}): p50 {run['p50_ms']} "
        f"p95 {run['p95_ms']} p99 {run['p99_ms']} max {run['max_ms']} ms over {run['count']} updates, "
        f"API confirmed {run['api_spot_check']['fraction']}{state}"
    )


async def run_rates(
    work_dir: Path,
    broker: EmbeddedBroker,
    registry: Path,
    rates: Sequence[int],
    seconds: float,
    world: str = "small",
) -> list[dict[str, Any]]:
    runs = []
    with ChildProcesses() as children:
        for rate in rates:
            run = await measure_rate(RunLayout(rate, work_dir, world), broker, registry, seconds, children)
            runs.append(run)
            print(f"freshness: {describe(run)}", file=sys.stderr, flush=True)
            if run["saturated"]:
                break
    return runs


def run_freshness(
    work_dir: Path,
    rates: Sequence[int] = DEFAULT_RATES,
    seconds_per_rate: float = 15.0,
    world: str = "small",
) -> dict[str, Any]:
    """Freshness percentiles per rate, stopping after the first rate the worker cannot sustain."""
    if seconds_per_rate <= WARMUP_SECONDS:
        raise ValueError(f"seconds_per_rate must exceed the {WARMUP_SECONDS:.0f} s warm-up")
    work_dir.mkdir(parents=True, exist_ok=True)
    registry = work_dir / "registry"
    ensure_default_encoder(EncoderRegistry(registry))
    with EmbeddedBroker() as broker:
        runs = asyncio.run(run_rates(work_dir, broker, registry, sorted(rates), seconds_per_rate, world))
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "world": world,
        "cores": os.cpu_count(),
        "clock": CLOCK_BASIS,
        "seconds_per_rate": seconds_per_rate,
        "warmup_seconds": WARMUP_SECONDS,
        "partitions": PARTITIONS,
        "target_p99_ms": TARGET_P99_MS,
        "runs": runs,
    }


# --- plot and command line -------------------------------------------------------------


def plot_freshness(result: dict[str, Any], path: Path) -> None:
    """p50/p95/p99 against the achieved rate, the target as a line, saturated rates marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in result["runs"] if run.get("count", 0) > 0]
    rates = [run["achieved_rate"] for run in runs]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, marker in (("p50_ms", "o"), ("p95_ms", "s"), ("p99_ms", "^")):
        axes.plot(rates, [run[name] for run in runs], marker=marker, label=name.removesuffix("_ms"))
    for run in runs:
        if run["saturated"]:
            label = f"saturated\nbacklog +{run['backlog_growth_events_per_s']:,}/s"
            point = (run["achieved_rate"], run["p50_ms"])
            axes.annotate(label, point, textcoords="offset points", xytext=(-20, -32), ha="right")
    axes.axhline(result["target_p99_ms"], color="red", linestyle="--", label="p99 target (500 ms)")
    axes.set_yscale("log")
    axes.set_xlabel("achieved events/s")
    axes.set_ylabel("event to readable (ms)")
    axes.set_title(f"embstream freshness vs load ({result['cores']} cores, {result['date']})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


@contextlib.contextmanager
def work_directory(chosen: Path | None, keep: bool) -> Iterator[Path]:
    """``chosen``, or a temporary directory removed afterwards unless ``keep``."""
    if chosen is not None:
        yield chosen
        return
    path = Path(tempfile.mkdtemp(prefix="embstream-freshness-"))
    try:
        yield path
    finally:
        if keep:
            print(f"freshness: work directory kept at {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", type=Path, help="write the JSON result here (else stdout)")
    parser.add_argument("--plot", type=Path, help="write the PNG plot here")
    parser.add_argument("--rates", type=int, nargs="+", default=list(DEFAULT_RATES))
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of events per rate")
    parser.add_argument(
        "--world", choices=sorted(WORLDS), default="small", help="whose events (models.synthetic.WORLDS)"
    )
    parser.add_argument("--work-dir", type=Path, help="keep registry, data and logs here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds, so children are stopped
    with work_directory(args.work_dir, args.keep) as work_dir:
        result = run_freshness(work_dir, args.rates, args.seconds, args.world)
    text = json.dumps(result, indent=2)
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.plot is not None:
        plot_freshness(result, args.plot)


if __name__ == "__main__":
    main()
