"""``embstream run``: a worker process, with the embedded broker when none is configured,
its consumer loop (:class:`StreamWorker`, or :class:`ScaleOutWorker` with scale-out) and its
HTTP server, around a :class:`stream.runtime.Runtime`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import torch

from store.vector_store import VersionedVectorStore
from stream.api.app import create_app
from stream.api.server import HttpLimits, HttpServer
from stream.console import say
from stream.ingest.worker import StreamWorker
from stream.kafka.broker import EmbeddedBroker
from stream.metrics import Metrics
from stream.rollout.controller import RolloutController
from stream.runtime import GC_THRESHOLDS, Runtime, ensure_worker_topics, fewer_collections, prepare_registry
from stream.scaleout.refresher import PartitionedRefresher
from stream.scaleout.worker import ScaleOutWorker
from stream.settings import Settings, SettingsError

__all__ = ["GC_THRESHOLDS", "RunningService", "fewer_collections", "prepare_registry", "run_service"]


@dataclass
class RunningService:
    settings: Settings
    store: VersionedVectorStore
    worker: StreamWorker | ScaleOutWorker
    metrics: Metrics
    controller: RolloutController


async def run_service(
    settings: Settings,
    stop: asyncio.Event,
    on_ready: Callable[[RunningService], Callable[[], Any] | None] | None = None,
) -> None:
    """Run broker (if embedded), worker and API until ``stop`` is set, then shut down in order.

    ``on_ready`` is called once the worker is set up to consume (its encoder loaded, just
    before it joins its group); a callable it returns runs first at shutdown (before the
    worker, the API and the broker stop).
    """
    torch.set_num_threads(settings.torch_threads)
    async with AsyncExitStack() as stack:
        stack.enter_context(fewer_collections())
        incarnation = f"external:{settings.broker}"
        if not settings.broker:
            if settings.kafka_security.protocol != "PLAINTEXT":
                raise SettingsError(
                    f"EMBSTREAM_KAFKA_SECURITY_PROTOCOL={settings.kafka_security.protocol} needs a broker "
                    "(--broker or EMBSTREAM_BROKER): the embedded broker speaks PLAINTEXT only"
                )
            broker = EmbeddedBroker().start()
            stack.callback(broker.stop)
            settings = settings.with_overrides(broker=broker.bootstrap)
            incarnation = f"embedded:{uuid.uuid4()}"
            say(
                f"no broker configured (--broker or EMBSTREAM_BROKER): started the embedded broker "
                f"at {broker.bootstrap}; it keeps events in memory only"
            )
        await ensure_worker_topics(settings)
        holder: list[StreamWorker | ScaleOutWorker] = []
        runtime = await Runtime.open(
            settings,
            stack,
            incarnation,
            readiness=lambda: holder[0].readiness(),
            health=lambda: {"assigned_partitions": holder[0].assigned},
        )
        store, metrics = runtime.store, runtime.metrics
        worker = (ScaleOutWorker if settings.scale_out else StreamWorker)(settings, store, metrics)
        holder.append(worker)
        limits = HttpLimits(
            settings.http_header_timeout_s, settings.http_body_timeout_s, settings.http_max_connections
        )
        http = HttpServer(create_app(runtime.context), settings.api_host, settings.api_port, limits)
        await http.start()  # before any long step, so a port in use fails at once
        stack.push_async_callback(http.stop)
        say(f"lookup API on http://{settings.api_host}:{settings.api_port}")
        # The producer connects while the encoder loads (or version 1 trains); the group is
        # joined only once the worker can apply events (GET /readyz says which step it is at).
        stack.push_async_callback(worker.stop)
        _, serving = await asyncio.gather(worker.start(), runtime.load())
        assert worker.producer is not None
        controller = await runtime.serve(serving, worker.producer)
        consuming: Awaitable[None]
        if isinstance(worker, ScaleOutWorker):
            partitioned = PartitionedRefresher(
                store,
                controller.refresh_encoders,
                topic=settings.topic,
                partitions=worker.partitions,
                **runtime.refresher_options(),
            )
            await worker.attach(partitioned, stop)
            consuming = worker.run(stop, partitioned, runtime.plane)
        else:
            consuming = worker.run(stop, runtime.refresher(), runtime.plane)
        service = RunningService(settings, store, worker, metrics, controller)
        say(f"worker consuming {settings.topic!r} from {settings.broker} as group {settings.group_id!r}")
        if on_ready is not None:
            cleanup = on_ready(service)
            if cleanup is not None:
                stack.callback(cleanup)
        await consuming
    say("stopped")
