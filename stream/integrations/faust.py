"""embstream inside a faust-streaming app::

    import faust
    from stream.integrations.faust import attach

    app = faust.App("recs", broker="kafka://localhost:9092")
    attach(app, topic="interactions", data_dir="embstream-data", registry="embstream-registry")

then ``faust -A myapp worker --web-port 8080``: the app's worker refreshes embeddings from
``topic`` and answers the lookup and recommendation API on faust's web port.

:func:`attach` adds three things to the app:

- a dependency service, started before faust's web server, consumer and agents and stopped
  after them: it opens the store and the registry, loads (or trains) the version to serve,
  replays the control topic, builds the item indexes (a :class:`stream.runtime.Runtime`, as
  ``embstream run`` does), and between batches follows the control topic (``embstream swap``
  works on it) and advances a staged version's backfill;
- an agent on ``topic`` that takes records in batches without acknowledging them
  (``noack_take``), applies each batch through the one write path
  (:func:`stream.ingest.worker.apply_records`: state, vectors and source offsets in one
  RocksDB write batch), and acknowledges them only after that commit. A crash in between
  redelivers them, and the offsets stored with the state skip what was already applied: the
  effect is exactly once, as in ``embstream run``. A batch that fails crashes the faust
  worker (``app.crash``) rather than leave its stream stuck;
- the API's routes on faust's web server (its other routes are left as they are).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import faust
import torch
from aiokafka import AIOKafkaProducer
from faust.exceptions import AlreadyConfiguredWarning
from mode import Service

from stream.api.app import MAX_BODY_BYTES, add_api
from stream.api.context import CONTEXT_KEY
from stream.console import say
from stream.ingest.records import ConsumedRecord
from stream.ingest.refresher import EmbeddingRefresher
from stream.ingest.worker import apply_records, flush_pending_outbox, group_readiness, producer_of
from stream.runtime import Runtime, ensure_worker_topics, fewer_collections
from stream.settings import Settings, SettingsError

__all__ = ["FaustRefresher", "attach"]

log = logging.getLogger("embstream.faust")


def attach(
    app: faust.App,
    *,
    topic: str = "interactions",
    data_dir: str | Path,
    registry: str | Path,
    **settings: Any,
) -> FaustRefresher:
    """Make ``app`` refresh embeddings from ``topic`` and serve them on its web server.

    ``settings``: any :class:`stream.settings.Settings` field (``api_token``,
    ``index_versions``, ``batch_max_records``, ...) over the ``EMBSTREAM_*`` environment; the
    broker is the app's. Call it where the app is defined, before the worker starts.
    """
    brokers = ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)
    chosen = Settings.from_env().with_overrides(
        topic=topic, data_dir=data_dir, registry=registry, broker=brokers, **settings
    )
    if chosen.scale_out:
        raise SettingsError(
            "scale-out (EMBSTREAM_SCALE_OUT) runs with embstream run only: a faust app hosts one "
            "refresher per app id"
        )
    with warnings.catch_warnings():  # faust warns of a setting written after it was read: here, by us
        warnings.simplefilter("ignore", AlreadyConfiguredWarning)
        options = dict(app.conf.web_application_options or {})
        options["client_max_size"] = max(int(options.get("client_max_size") or 0), MAX_BODY_BYTES)
        app.conf.web_application_options = options  # read when faust creates its web application
    refresher = FaustRefresher(app, chosen)
    app.add_dependency(refresher)
    add_api(app.web.web_app, None)  # type: ignore[attr-defined]  # the aiohttp driver's
    channel = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    app.agent(channel, name=f"embstream-{topic}", concurrency=1)(refresher.consume)
    app.on_partitions_assigned.connect(refresher.on_assigned)  # type: ignore[arg-type]
    return refresher


class FaustRefresher(Service):  # type: ignore[misc]
    """The refresher a faust app hosts: the runtime (opened before faust's consumer joins its
    group, so no partition waits on an encoder still loading), the agent's batches and the
    control plane between them."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        super().__init__()
        self.app = app
        self.settings = settings
        self.runtime: Runtime | None = None
        self.refresher: EmbeddingRefresher | None = None
        self.producer: AIOKafkaProducer | None = None
        self.assigned: list[int] = []
        self.joined = False  # faust's consumer got its first assignment
        self.opened = asyncio.Event()
        self._batch = asyncio.Lock()  # one batch, or the control plane, at a time
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embstream-refresh")
        self._stack = AsyncExitStack()

    async def on_start(self) -> None:
        settings, stack = self.settings, self._stack
        torch.set_num_threads(settings.torch_threads)
        stack.enter_context(fewer_collections())
        await ensure_worker_topics(settings)
        runtime = await Runtime.open(
            settings,
            stack,
            f"external:{settings.broker}",
            readiness=self.readiness,
            health=lambda: {"assigned_partitions": self.assigned},
        )
        self.app.web.web_app[CONTEXT_KEY] = runtime.context  # type: ignore[attr-defined]
        self.producer = producer_of(settings)
        await self.producer.start()
        stack.push_async_callback(self.producer.stop)
        await flush_pending_outbox(runtime.store, self.producer)
        serving = await runtime.load()
        await runtime.serve(serving, self.producer)
        self.runtime, self.refresher = runtime, runtime.refresher()
        self.opened.set()
        say(f"refreshing embeddings from {settings.topic!r} inside faust app {self.app.conf.id!r}")

    async def on_stop(self) -> None:
        async with self._batch:  # no batch or control step starts any more
            # A batch whose agent faust cancelled still runs on the refresh thread: let it
            # commit before the store closes.
            await asyncio.to_thread(self._executor.shutdown, True)
            await self._stack.aclose()

    def readiness(self) -> tuple[bool, str]:
        return group_readiness(self.joined)

    async def on_assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned: set[Any] = args[0] if args else kwargs["assigned"]
        self.assigned = sorted(tp.partition for tp in assigned if tp.topic == self.settings.topic)
        self.joined = True

    async def consume(self, stream: Any) -> None:  # a faust.Stream: its type lacks noack_take
        """The agent: batches in, applied and committed, then acknowledged."""
        await self.opened.wait()
        settings = self.settings
        async for events in stream.noack_take(
            settings.batch_max_records, within=settings.batch_max_wait_ms / 1000
        ):
            try:
                if not await self.apply([event.message for event in events]):
                    return
            except Exception as error:  # the stream cannot go on past a batch it did not apply
                log.exception("a batch was not applied: stopping the faust worker")
                await self.app.crash(error)
                return
            for event in events:
                await stream.ack(event)

    async def apply(self, messages: list[Any]) -> bool:
        """Apply faust's ``messages`` (raw keys and values) through the one write path; False
        when stopping (nothing applied: acknowledge nothing)."""
        records = [
            ConsumedRecord(m.topic, m.partition, m.offset, m.key, m.value, round(m.timestamp * 1000))
            for m in messages
        ]
        assert self.refresher is not None and self.producer is not None and self.runtime is not None
        async with self._batch:
            if self.should_stop:  # stopping: never after the store closed (redelivered instead)
                return False
            await apply_records(records, self.refresher, self._executor, self.producer, self.runtime.metrics)
        return True

    @Service.task  # type: ignore[misc]
    async def _between_batches(self) -> None:
        """Control messages and the backfill of a staged version, never during a batch (also
        while no event comes: a swap must not wait for traffic)."""
        await self.opened.wait()
        loop = asyncio.get_running_loop()
        runtime = self.runtime
        assert runtime is not None and runtime.plane is not None
        while not self.should_stop:
            try:
                async with self._batch:
                    if self.should_stop:  # on_stop may have closed the store meanwhile
                        return
                    await runtime.plane.between_batches(loop, self._executor)
            except Exception as error:
                log.exception("the control plane failed: stopping the faust worker")
                await self.app.crash(error)
                return
            runtime.metrics.tick()
            await asyncio.sleep(0.1)
