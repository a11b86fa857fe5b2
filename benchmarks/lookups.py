"""Lookup latency of the API (JSON and binary batches) with Redis as the peer, at fixed rates.

Builds a real RocksDB store of N users (64-dim float32, versions 1 to 3 written in batches
through the store's writer, version 3 serving), then measures:

- ``in_process``: the store read path called directly (``lookup_many`` for 1 / 100 / 1,000
  ids and ``resolve_matrix`` for 100 / 1,000), back to back;
- ``api``: the real aiohttp app from ``create_app`` in a child process (its own interpreter
  and event loop), read over loopback HTTP by an aiohttp ``ClientSession`` (keep-alive
  pool) in this process: single GET, and batches of 100 and 1,000 ids as JSON and binary;
- both with the worker's default serving cache, warmed (``in_process``, ``api``), and
  without one, every read from RocksDB (``in_process_rocksdb``, ``api_rocksdb``);
- ``api_floor``: single GETs against an aiohttp app answering one prepared body of the same
  size, no store: the cost of aiohttp, loopback and the client, before any lookup work;
- ``redis``: ``redis-server`` (no persistence, loopback, temp dir) holding the serving
  vectors as raw float32 bytes under the same keys, read by redis-py's asyncio client:
  ``GET`` and ``MGET`` of 100 and 1,000 keys.

Network scenarios run open loop: requests are sent on a fixed schedule (200/s for single
ids, 50/s for batches) whether or not earlier ones have answered, and latency runs from the
scheduled send time to the moment the client holds the vectors decoded as numpy (JSON
parsed, binary body or ``MGET`` values turned into a float32 matrix), so a stalled server
cannot hide its stall (no coordinated omission). Ids are drawn uniformly at random from
200,000 users (``--world small``), or from 1,000,000 users with the real world's Zipf-like
activity (``--world real``: a few users are read far more often than most).

    python -m benchmarks.lookups [--world small|real] [--entities N] --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.synthetic import REAL_WORLD
from store.lookup import lookup_many, resolve_matrix
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore
from stream.api.vector_format import VECTORS_MEDIA_TYPE, decode_vectors
from stream.kafka.broker import free_port

DIM = 64
VERSIONS = (1, 2, 3)
WRITE_BATCH = 5_000
SINGLE_RATE = 200.0
BATCH_RATE = 50.0
BATCH_SIZES = (100, 1_000)
WARMUP_S = 0.5
KIND = "user"
#: The API and in-process reads run with the worker's default serving cache
#: (``EMBSTREAM_SERVING_CACHE_MB``) and again without one (``*_rocksdb``: RocksDB only).
SERVING_CACHE_MB = 512
ROOT = Path(__file__).resolve().parent.parent

Request = Callable[[list[str]], Awaitable[bool]]


def entity_id(number: int) -> str:
    return f"u{number}"


def vectors_of(version: int, start: int, count: int) -> np.ndarray:
    """Deterministic vectors of one version for entities ``start .. start+count-1``."""
    rng = np.random.default_rng([version, start])
    return rng.standard_normal((count, DIM)).astype(np.float32)


# ----- the store -------------------------------------------------------------------------


def build_store(path: Path, entities: int) -> float:
    """Write every entity at every version (as refresh batches would), serve the last one."""
    started = time.perf_counter()
    store = VersionedVectorStore(path)
    try:
        for version in VERSIONS:
            for start in range(0, entities, WRITE_BATCH):
                count = min(WRITE_BATCH, entities - start)
                writer = store.writer()
                ids = [entity_id(n) for n in range(start, start + count)]
                writer.put_vectors(KIND, ids, version, vectors_of(version, start, count), 1_000 * version)
                writer.commit()
        store.set_serving_version(VERSIONS[-1])
    finally:
        store.close()
    return round(time.perf_counter() - started, 2)


def serving_bytes(entities: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """The serving version's vectors, in write batches (the peer loads the same bytes)."""
    for start in range(0, entities, WRITE_BATCH):
        count = min(WRITE_BATCH, entities - start)
        yield [entity_id(n) for n in range(start, start + count)], vectors_of(VERSIONS[-1], start, count)


# ----- measuring -------------------------------------------------------------------------


def summarize(latencies_s: list[float], errors: int, elapsed_s: float | None = None) -> dict[str, Any]:
    if not latencies_s:
        return {"requests": 0, "errors": errors}
    ms = np.asarray(latencies_s) * 1e3
    result: dict[str, Any] = {
        "requests": len(latencies_s),
        "errors": errors,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
    }
    if elapsed_s:
        result["achieved_rate"] = round(len(latencies_s) / elapsed_s, 1)
    return result


@dataclass(frozen=True)
class Population:
    """The users the store holds and how reads pick them: uniformly (``skew`` 0), or with
    Zipf-like popularity of exponent ``skew`` (the real world's user activity, where a few
    users are read far more often than most, as the serving cache meets them)."""

    entities: int
    skew: float = 0.0

    def batches(self, size: int, count: int, seed: int) -> list[list[str]]:
        """``count`` batches of ``size`` ids."""
        rng = np.random.default_rng(seed)
        if self.skew:
            weights = 1.0 / np.arange(1, self.entities + 1) ** self.skew
            cdf = weights.cumsum() / weights.sum()
            ranks = cdf.searchsorted(rng.random((count, size)), side="right")
            numbers = np.random.default_rng(0).permutation(self.entities)[ranks]  # hot ids spread
        else:
            numbers = rng.integers(0, self.entities, size=(count, size))
        return [[entity_id(int(n)) for n in row] for row in numbers]


#: The lookups' populations of the benchmark worlds (``models.synthetic.WORLDS``).
POPULATIONS = {
    "small": Population(200_000),
    "real": Population(int(REAL_WORLD["users"]), float(REAL_WORLD["user_exponent"])),
}


async def open_loop(request: Request, batches: list[list[str]], rate: float) -> dict[str, Any]:
    """Send ``batches`` at ``rate`` per second on a fixed schedule; latency from schedule."""
    latencies: list[float] = []
    errors = 0

    async def one(ids: list[str], scheduled: float) -> None:
        nonlocal errors
        try:
            ok = await request(ids)
        except Exception:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - scheduled)
        else:
            errors += 1

    tasks = []
    start = time.perf_counter() + 0.01
    for number, ids in enumerate(batches):
        scheduled = start + number / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(ids, scheduled)))
    await asyncio.gather(*tasks)
    return summarize(latencies, errors, time.perf_counter() - start)


async def scenario(
    request: Request, population: Population, size: int, rate: float, duration_s: float
) -> dict[str, Any]:
    """A short unrecorded warm-up, then ``duration_s`` of requests of ``size`` ids at ``rate``."""
    await open_loop(request, population.batches(size, max(1, int(rate * WARMUP_S)), seed=size + 1), rate)
    return await open_loop(request, population.batches(size, max(1, int(rate * duration_s)), seed=size), rate)


def measure_in_process(
    store_path: Path, population: Population, duration_s: float, serving_cache_mb: int = 0
) -> dict[str, Any]:
    """The direct read path, back to back, for a share of ``duration_s`` per case."""
    store = open_store(store_path, serving_cache_mb)
    cases: dict[str, tuple[Callable[[list[str]], object], int]] = {
        "lookup_many_1": (lambda ids: lookup_many(store, KIND, ids, VERSIONS[-1]), 1),
        "lookup_many_100": (lambda ids: lookup_many(store, KIND, ids, VERSIONS[-1]), 100),
        "lookup_many_1000": (lambda ids: lookup_many(store, KIND, ids, VERSIONS[-1]), 1_000),
        "resolve_matrix_100": (lambda ids: resolve_matrix(store, KIND, ids, None), 100),
        "resolve_matrix_1000": (lambda ids: resolve_matrix(store, KIND, ids, None), 1_000),
    }
    results = {}
    try:
        for name, (read, size) in cases.items():
            results[name] = time_calls(read, population.batches(size, 2_000, seed=size), duration_s / 3)
    finally:
        store.close()
    return results


def time_calls(
    read: Callable[[list[str]], object], batches: list[list[str]], budget_s: float
) -> dict[str, Any]:
    latencies = []
    deadline = time.perf_counter() + budget_s
    for ids in batches:
        started = time.perf_counter()
        read(ids)
        latencies.append(time.perf_counter() - started)
        if started > deadline:
            break
    return summarize(latencies[len(latencies) // 10 :], 0)  # the first tenth warms caches


# ----- the API in a child process --------------------------------------------------------


def open_store(store_path: Path, serving_cache_mb: int) -> VersionedVectorStore:
    """The store as a worker opens it, its serving cache (if any) warmed before reads start."""
    store = VersionedVectorStore(store_path, StoreOptions(serving_cache_mb=serving_cache_mb))
    store.warm_serving_cache()
    return store


#: What a child API process serves: the real app with the serving cache, the real app on
#: RocksDB only, or aiohttp's floor (one constant answer of a single GET's size, no store).
SERVE_MODES = ("cache", "rocksdb", "floor")


def serve(store_path: Path, port: int, mode: str) -> None:
    """Child process: the real app over the store (no worker, no rollout), until killed."""
    from aiohttp import web

    if mode == "floor":
        web.run_app(floor_app(), host="127.0.0.1", port=port, access_log=None, print=None)
        return

    from models.registry import EncoderRegistry
    from stream.api.app import ApiContext, create_app
    from stream.metrics import Metrics

    store = open_store(store_path, SERVING_CACHE_MB if mode == "cache" else 0)
    registry = EncoderRegistry(Path(tempfile.mkdtemp(prefix="embstream-bench-registry-")))
    context = ApiContext(store=store, metrics=Metrics(), registry=registry, health=lambda: {"store": "ready"})
    web.run_app(create_app(context), host="127.0.0.1", port=port, access_log=None, print=None)


def floor_app() -> Any:
    """An aiohttp app answering every single GET with the same prepared body (a real
    answer's size): what aiohttp and loopback cost before any lookup work."""
    from aiohttp import web

    body = orjson.dumps(
        {
            "kind": KIND,
            "id": entity_id(0),
            "version": VERSIONS[-1],
            "vector": vectors_of(VERSIONS[-1], 0, 1)[0],
            "updated_at": 1_000 * VERSIONS[-1],
            "source": "native",
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/embeddings/{kind}/{id}", answer)
    app.router.add_get("/healthz", answer)
    return app


@contextmanager
def api_process(store_path: Path, mode: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "benchmarks.lookups",
        "serve",
        str(store_path),
        str(port),
        mode,
    ]
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(lambda: http_ok(f"{base}/healthz"), process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_ready(ready: Callable[[], bool], process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args} not ready within {timeout_s} s")
        time.sleep(0.05)


async def lean_single_client(base: str) -> tuple[Request, Callable[[], None]]:
    """Single GETs over one keep-alive connection with hand-written HTTP/1.1: the server's
    latency with as little client cost as Python allows (the aiohttp client adds about as
    much as the server spends)."""
    host, _, port = base.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lock = asyncio.Lock()

    async def send(ids: list[str]) -> bool:
        async with lock:
            writer.write(f"GET /v1/embeddings/{KIND}/{ids[0]} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            body = await reader.readexactly(int(length.group(1)) if length else 0)
        return head.startswith(b"HTTP/1.1 200") and len(orjson.loads(body)["vector"]) == DIM

    return send, writer.close


async def measure_api(
    base: str, population: Population, duration_s: float, single_only: bool = False
) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def single(ids: list[str]) -> bool:
            async with session.get(f"{base}/v1/embeddings/{KIND}/{ids[0]}") as response:
                body = await response.read()
            return response.status == 200 and len(orjson.loads(body)["vector"]) == DIM

        def batch(binary: bool) -> Request:
            headers = {"Accept": VECTORS_MEDIA_TYPE if binary else "application/json"}

            async def send(ids: list[str]) -> bool:
                payload = orjson.dumps({"ids": ids})
                async with session.post(
                    f"{base}/v1/embeddings/{KIND}/batch", data=payload, headers=headers
                ) as r:
                    body = await r.read()
                if r.status != 200:
                    return False
                return len(decode_vectors(body)[1] if binary else json_matrix(body)) == len(ids)

            return send

        results = {"get": await scenario(single, population, 1, SINGLE_RATE, duration_s)}
        lean, close = await lean_single_client(base)
        try:
            results["get_lean_client"] = await scenario(lean, population, 1, SINGLE_RATE, duration_s)
        finally:
            close()
        if single_only:
            return results
        for size in BATCH_SIZES:
            for binary in (False, True):
                name = f"batch_{size}_{'binary' if binary else 'json'}"
                results[name] = await scenario(batch(binary), population, size, BATCH_RATE, duration_s)
        return results


def json_matrix(body: bytes) -> np.ndarray:
    rows = orjson.loads(body)["results"]
    return np.array([row["vector"] for row in rows if row is not None], dtype=np.float32)


# ----- the Redis peer --------------------------------------------------------------------


@contextmanager
def redis_process() -> Iterator[int]:
    port = free_port()
    directory = tempfile.mkdtemp(prefix="embstream-bench-redis-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", directory]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(lambda: redis_ping(port), process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def redis_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def load_redis(port: int, entities: int) -> float:
    """The serving vectors under keys ``u:<id>`` (the store's key layout), raw float32."""
    import redis

    started = time.perf_counter()
    client = redis.Redis(host="127.0.0.1", port=port)
    for ids, vectors in serving_bytes(entities):
        client.mset({f"u:{entity}": row.tobytes() for entity, row in zip(ids, vectors, strict=True)})
    client.close()
    return round(time.perf_counter() - started, 2)


async def measure_redis(port: int, population: Population, duration_s: float) -> dict[str, Any]:
    from redis.asyncio import Redis

    client = Redis(host="127.0.0.1", port=port, max_connections=64)
    try:

        async def get(ids: list[str]) -> bool:
            value = await client.get(f"u:{ids[0]}")
            return value is not None and np.frombuffer(value, dtype="<f4").shape == (DIM,)

        async def mget(ids: list[str]) -> bool:
            values = await client.mget([f"u:{entity}" for entity in ids])
            matrix = np.frombuffer(b"".join(values), dtype="<f4").reshape(len(ids), DIM)
            return matrix.shape[0] == len(ids)

        results = {"get": await scenario(get, population, 1, SINGLE_RATE, duration_s)}
        for size in BATCH_SIZES:
            results[f"mget_{size}"] = await scenario(mget, population, size, BATCH_RATE, duration_s)
        return results
    finally:
        await client.aclose()


async def same_vectors(base: str, port: int, population: Population) -> bool:
    """One binary batch through the API equals the same keys read from Redis."""
    import aiohttp
    from redis.asyncio import Redis

    ids = population.batches(100, 1, seed=7)[0]
    async with aiohttp.ClientSession() as session:
        url = f"{base}/v1/embeddings/{KIND}/batch?format=binary"
        async with session.post(url, data=orjson.dumps({"ids": ids})) as response:
            _, from_api = decode_vectors(await response.read())
    client = Redis(host="127.0.0.1", port=port)
    values = await client.mget([f"u:{entity}" for entity in ids])
    await client.aclose()
    return bool(np.array_equal(from_api, np.frombuffer(b"".join(values), dtype="<f4").reshape(len(ids), DIM)))


# ----- the whole run ---------------------------------------------------------------------


def run_lookups(
    work_dir: Path, population: Population = POPULATIONS["small"], duration_s: float = 5.0
) -> dict[str, Any]:
    """Build the store in ``work_dir``, then measure in-process, API and (if present) Redis."""
    store_path = Path(work_dir) / "store"
    entities = population.entities
    result: dict[str, Any] = {
        "config": {
            "entities": entities,
            "access": f"Zipf-like, exponent {population.skew}" if population.skew else "uniform",
            "dim": DIM,
            "versions_per_entity": len(VERSIONS),
            "duration_s_per_scenario": duration_s,
            "single_rate_per_s": SINGLE_RATE,
            "batch_rate_per_s": BATCH_RATE,
            "http_client": "aiohttp ClientSession, keep-alive pool of 64, own process and event loop",
            "redis_client": "redis-py asyncio client, pool of 64",
            "latency": "open loop, from scheduled send to vectors decoded as numpy in the client",
            "cores": os.cpu_count(),
        },
        "build_store_s": build_store(store_path, entities),
    }
    result["in_process"] = measure_in_process(store_path, population, duration_s, SERVING_CACHE_MB)
    result["in_process_rocksdb"] = measure_in_process(store_path, population, duration_s)
    with api_process(store_path, "floor") as base:
        result["api_floor"] = asyncio.run(measure_api(base, population, duration_s, single_only=True))
    with api_process(store_path, "rocksdb") as base:
        result["api_rocksdb"] = asyncio.run(measure_api(base, population, duration_s))
    with api_process(store_path, "cache") as base:
        result["api"] = asyncio.run(measure_api(base, population, duration_s))
        if shutil.which("redis-server") is None:
            result["redis"] = {"skipped": "redis-server is not on PATH"}
        else:
            with redis_process() as port:
                result["redis_load_s"] = load_redis(port, entities)
                result["redis"] = asyncio.run(measure_redis(port, population, duration_s))
                result["api_equals_redis"] = asyncio.run(same_vectors(base, port, population))
    return result


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--world",
        choices=sorted(POPULATIONS),
        default="small",
        help="small: 200,000 users read uniformly; real: 1,000,000 users read with Zipf-like skew",
    )
    parser.add_argument("--entities", type=int, help="users in the store (default: the world's)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    parser.add_argument(
        "--work-dir", type=Path, help="where to build the store (default: a temp dir, removed)"
    )
    args = parser.parse_args()
    population = POPULATIONS[args.world]
    if args.entities:
        population = replace(population, entities=args.entities)
    if args.work_dir is not None:
        result = run_lookups(args.work_dir, population, args.duration)
    else:
        with tempfile.TemporaryDirectory(prefix="embstream-bench-lookups-") as work:
            result = run_lookups(Path(work), population, args.duration)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
