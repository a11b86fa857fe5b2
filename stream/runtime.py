"""What every way of running a worker shares, put together in order and taken down in
reverse (an ``AsyncExitStack``): its topics, the store, metrics, the registry and the version
to serve, the API's context, the rollout (controller and control plane), item indexes,
popular items and the serving cache.

``embstream run`` (:mod:`stream.service`) adds its own consumer loop and HTTP server to a
:class:`Runtime`; a faust app (:mod:`stream.integrations.faust`) adds faust's agent and web
server. Either way there is one write path (:class:`stream.ingest.refresher.EmbeddingRefresher`,
built by :meth:`Runtime.refresher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from models.bootstrap import ensure_default_encoder
from models.registry import EncoderRegistry
from store.item_indexes import ItemIndexes
from store.popular import PopularItems
from store.vector_store import VersionedVectorStore
from stream.api.context import ApiContext
from stream.console import progress_bar, say
from stream.ingest.refresher import EmbeddingRefresher
from stream.kafka.topics import ensure_topics
from stream.metrics import Metrics
from stream.rollout.controller import RolloutController
from stream.rollout.messages import ControlCodec
from stream.rollout.plane import RolloutPlane
from stream.scaleout.worker import scale_out_topics
from stream.settings import Settings

__all__ = [
    "GC_THRESHOLDS",
    "Runtime",
    "ensure_worker_topics",
    "fewer_collections",
    "prepare_registry",
    "worker_identity",
]

log = logging.getLogger("embstream")


def prepare_registry(registry: EncoderRegistry, settings: Settings, store: VersionedVectorStore) -> int:
    """The version to start serving, creating version 1 in an empty registry.

    An explicit ``--encoder-version`` wins; else the store's serving version (if the
    registry still has it); else the registry's latest. The control topic, replayed later,
    can still override the last two.
    """
    if registry.latest() is None:
        say(
            f"the registry at {settings.registry} is empty: training version 1 of the default "
            f"encoder on synthetic data (seed {settings.seed})"
        )
        with progress_bar(total=None, desc="training v1", unit="step") as bar:
            manifest = ensure_default_encoder(registry, seed=settings.seed, progress=bar.report)
        if manifest is None:
            say("version 1 was created meanwhile by another worker sharing the registry")
        else:
            say(f"created version 1 ({manifest.training})")
    if settings.encoder_version is not None:
        registry.manifest(settings.encoder_version)  # a clear error if it does not exist
        return settings.encoder_version
    stored = store.serving_version
    if stored is not None and stored in registry.versions():
        return stored
    latest = registry.latest()
    assert latest is not None
    return latest


async def _keep_serving_cache_warm(store: VersionedVectorStore, stack: AsyncExitStack) -> None:
    """Copy the serving version's vectors into the serving cache in the background, at start
    and again after every change of serving version (lookups read RocksDB for what is not
    copied yet); stopped and awaited before the store closes."""
    if store.serving_cache is None:
        return
    stop = threading.Event()

    async def keep_warm() -> None:
        warmed: int | None = None
        while not stop.is_set():
            version = store.serving_version
            if version is not None and version != warmed:
                started = time.monotonic()
                try:
                    copied = await asyncio.to_thread(store.warm_serving_cache, stop=stop)
                except Exception as error:  # best effort: lookups read RocksDB (and report damage)
                    say(f"serving cache not warmed: {error}")
                    return
                if not stop.is_set() and store.serving_version == version:
                    warmed = version
                    if copied:
                        say(
                            f"serving cache: {copied} vectors of version {version} copied in "
                            f"{time.monotonic() - started:.1f} s"
                        )
            await asyncio.sleep(0.2)

    task = asyncio.ensure_future(keep_warm())

    async def stop_warming() -> None:
        stop.set()
        await task

    stack.push_async_callback(stop_warming)


def _item_indexes(settings: Settings, store: VersionedVectorStore, registry: EncoderRegistry) -> ItemIndexes:
    """Item indexes of the store, saying how each build goes (a bar on a terminal)."""
    bars: dict[int, Any] = {}

    def report(version: int, done: int, total: int) -> None:
        bar = bars.get(version)
        if bar is None:
            say(f"item index of version {version}: building from the store ({total} items)")
            bar = bars[version] = progress_bar(total=total, desc=f"indexing v{version}", unit="item")
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            say(f"item index of version {version}: built ({done} items scanned)")

    return ItemIndexes(
        store,
        dim_of=lambda version: registry.manifest(version).dim,
        keep=settings.index_versions,
        on_build_progress=report,
        carry=registry.carry,
    )


async def _keep_indexes_tracking(
    indexes: ItemIndexes, controller: RolloutController, stack: AsyncExitStack
) -> None:
    """Index the serving and staged versions (and older ones the bound allows), following
    every stage, promote, rollback and cancel; stopped before the store closes."""

    def wanted_now() -> tuple[int | None, int | None, tuple[int, ...]]:
        retained = tuple(encoder.version for encoder in controller.retained_encoders)
        return controller.store.serving_version, controller.state.staged, retained

    indexes.track(*wanted_now())
    indexes.start()

    async def follow() -> None:
        tracked = wanted_now()
        while True:
            await asyncio.sleep(0.1)
            wanted = wanted_now()
            if wanted != tracked:
                try:
                    await asyncio.to_thread(indexes.track, *wanted)
                except Exception as error:  # e.g. a store read failing: try again next round
                    log.error("item indexes not updated for versions %s: %s", wanted, error)
                    continue
                tracked = wanted

    stack.push_async_callback(asyncio.to_thread, indexes.stop)  # after the task below stopped
    _in_background(follow(), stack)


def _in_background(work: Coroutine[Any, Any, None], stack: AsyncExitStack) -> None:
    """Run ``work`` as a task until ``stack`` closes (then cancelled and awaited)."""
    task = asyncio.ensure_future(work)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


async def _keep_popular_fresh(popular: PopularItems, stack: AsyncExitStack, every_s: float = 30.0) -> None:
    """Rank the items by popularity at start and every ``every_s`` seconds (the fallback of
    recommendations for users with no vector); stopped before the store closes."""

    async def refresh() -> None:
        while True:
            try:
                await asyncio.to_thread(popular.refresh)
            except Exception as error:  # e.g. a damaged block: the last ranking stays
                log.error("popular items not ranked: %s", error)
            await asyncio.sleep(every_s)

    _in_background(refresh(), stack)


async def _sample_status(metrics: Metrics, stack: AsyncExitStack, every_s: float = 2.0) -> None:
    """One row of the status page's history every ``every_s`` seconds."""

    async def sample() -> None:
        while True:
            await asyncio.sleep(every_s)
            metrics.sample()

    _in_background(sample(), stack)


def worker_identity(store: VersionedVectorStore) -> str:
    """A worker's name, kept in its store: a restarted worker reports as the same worker."""
    stored = store.get_meta("worker_id")
    if stored is not None:
        return stored.decode()
    name = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    writer = store.writer()
    writer.put_meta("worker_id", name.encode())
    writer.commit()
    return name


#: The cyclic garbage collector's thresholds while a worker runs (Python's defaults are 700,
#: 10, 10). A batch allocates tens of thousands of short-lived objects (records, events,
#: update messages), none of them in cycles; at the defaults the collector walks the young
#: generation every few hundred of them, and the whole heap (a million cached ids) often,
#: about a tenth of a batch's time at real cardinality.
GC_THRESHOLDS = (50_000, 50, 100)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the collector's thresholds to :data:`GC_THRESHOLDS` (never lower them) while the
    worker runs; put them back after."""
    before = gc.get_threshold()
    gc.set_threshold(*(max(old, new) for old, new in zip(before, GC_THRESHOLDS, strict=True)))
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def ensure_worker_topics(settings: Settings) -> None:
    """Create the topics a worker reads and writes that do not exist yet."""
    topics = {
        settings.topic: settings.partitions,
        settings.dlq_topic: 1,
        settings.updates_topic: settings.partitions,
        settings.control_topic: 1,
    }
    if settings.scale_out:
        topics.update(scale_out_topics(settings.topic, settings.partitions))
    await asyncio.to_thread(
        ensure_topics, settings.broker_servers, topics, **settings.kafka_security.kafka_python()
    )


@dataclass
class Runtime:
    """A worker's parts other than its consumer: :meth:`open` them, :meth:`load` the version
    to serve, then :meth:`serve` it (the rollout, indexes and caches start)."""

    settings: Settings
    stack: AsyncExitStack
    store: VersionedVectorStore
    metrics: Metrics
    registry: EncoderRegistry
    context: ApiContext
    controller: RolloutController | None = None
    plane: RolloutPlane | None = None
    started_at: float = field(default_factory=time.monotonic)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        stack: AsyncExitStack,
        incarnation: str,
        readiness: Callable[[], tuple[bool, str]] | None,
        health: Callable[[], dict[str, Any]],
    ) -> Runtime:
        """Open the store (closed by ``stack``) and build the API's context; ``incarnation``
        names the broker (its offsets are reset when it changed), ``readiness`` and
        ``health`` are the consumer's parts of ``/readyz`` and ``/healthz``."""
        store = VersionedVectorStore(settings.data_dir, settings.store_options)
        stack.callback(store.close)
        if store.ensure_broker_incarnation(incarnation):
            say("the broker changed since the last run: source offsets reset, entity state kept")
        metrics = Metrics()
        await _sample_status(metrics, stack)
        registry = EncoderRegistry(settings.registry)
        context = ApiContext(
            store=store,
            metrics=metrics,
            registry=registry,
            token=settings.api_token,
            backup_root=settings.backup_dir,
            body_timeout_s=settings.http_body_timeout_s,
            admin_allowed=bool(settings.api_token) or settings.api_host in ("127.0.0.1", "localhost", "::1"),
            readiness=readiness,
            indexes_pending=bool(settings.index_versions),
            health=lambda: {},
        )
        runtime = cls(settings, stack, store, metrics, registry, context)
        context.health = lambda: runtime.health(health())
        return runtime

    def health(self, consumer: dict[str, Any]) -> dict[str, Any]:
        """``/healthz``: the consumer's part, indexes, counts and uptime."""
        metrics = self.metrics
        return {
            **consumer,
            **({"scale_out": metrics.scale_out()} if metrics.scale_out is not None else {}),
            **(
                {"item_indexes": {str(v): asdict(i) for v, i in metrics.item_indexes().items()}}
                if metrics.item_indexes is not None
                else {}
            ),
            "events_consumed": metrics.events_consumed,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
        }

    async def load(self) -> int:
        """The version to start serving (version 1 is trained first in an empty registry)."""
        return await asyncio.to_thread(prepare_registry, self.registry, self.settings, self.store)

    async def serve(self, serving: int, producer: AIOKafkaProducer) -> RolloutController:
        """Start the rollout at ``serving`` (the control topic replayed, its producer
        ``producer``), the serving cache, the item indexes and the popular items."""
        settings, store = self.settings, self.store
        indexes = _item_indexes(settings, store, self.registry) if settings.index_versions else None
        controller = RolloutController(
            self.registry,
            store,
            worker_identity(store),
            settings.user_window,
            indexes,
            settings.retained_versions,
        )
        plane = RolloutPlane(
            controller,
            settings.broker_servers,
            settings.control_topic,
            producer,
            backfill_rate=settings.backfill_rate or None,
            client_options=settings.kafka_security.aiokafka(),
            codec=ControlCodec(settings.control_key),
            metrics=self.metrics,
        )
        await plane.start(serving, override=settings.encoder_version is not None)
        self.stack.push_async_callback(plane.stop)
        await _keep_serving_cache_warm(store, self.stack)
        if indexes is not None:
            await _keep_indexes_tracking(indexes, controller, self.stack)
            self.context.popular = PopularItems(store)
            await _keep_popular_fresh(self.context.popular, self.stack)
            self.context.item_indexes = indexes
            self.metrics.item_indexes = indexes.status
        self.context.controller, self.controller, self.plane = controller, controller, plane
        encoder = controller.serving_encoder
        assert encoder is not None
        say(f"serving version {encoder.version} (dim {encoder.dim}, sha256 verified)")
        return controller

    def refresher_options(self) -> dict[str, Any]:
        """What the write path takes from the settings, for either refresher."""
        settings = self.settings
        return {
            "updates_topic": settings.updates_topic,
            "dlq_topic": settings.dlq_topic,
            "user_window": settings.user_window,
            "max_future_skew_ms": settings.max_future_skew_ms,
            "max_event_bytes": settings.max_event_bytes,
            "updates_format": settings.updates_format,
        }

    def refresher(self) -> EmbeddingRefresher:
        """The one write path, writing the versions the rollout says (after :meth:`serve`)."""
        assert self.controller is not None
        return EmbeddingRefresher(self.store, self.controller.refresh_encoders, **self.refresher_options())
