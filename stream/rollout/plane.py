"""The worker's connection to the control topic: replay at start, then apply new commands,
advance the backfill and report progress, all between stream batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import Executor
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.metrics import Metrics
from stream.rollout.backfill import Backfiller
from stream.rollout.controller import RolloutController
from stream.rollout.messages import ControlCodec

__all__ = ["RolloutPlane"]

log = logging.getLogger("embstream.rollout")
BACKFILL_CHUNK = 2_000


class RolloutPlane:
    def __init__(
        self,
        controller: RolloutController,
        servers: list[str],
        topic: str,
        producer: AIOKafkaProducer,
        backfill_rate: float | None = None,
        client_options: dict[str, Any] | None = None,
        codec: ControlCodec | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.controller = controller
        self.servers = servers
        self.topic = topic
        self.producer = producer
        self.backfill_rate = backfill_rate
        self.client_options = client_options or {}  # Kafka security (stream/kafka_security.py)
        self.codec = codec or ControlCodec()  # signs and checks messages when a key is set
        self.metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        self._last_progress = 0.0
        self._last_backfill = time.monotonic()
        self._reported_complete = False
        self._backfiller: Backfiller | None = None

    async def start(self, serving: int, override: bool = False) -> None:
        """Replay the control topic (idempotent fold), then start serving."""
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="embstream-control",
            **self.client_options,
        )
        await self.consumer.start()
        partition = TopicPartition(self.topic, 0)
        self.consumer.assign([partition])
        await self.consumer.seek_to_beginning(partition)
        history: list[dict[str, Any]] = []
        while True:  # the control topic is small; read until it stays quiet
            fetched = await self.consumer.getmany(timeout_ms=400)
            if not fetched:
                break
            for messages in fetched.values():
                for record in messages:
                    message = self._decode(record.value)
                    if message is not None:
                        history.append(message)
        loop = asyncio.get_running_loop()
        # The same fold as live apply (it may load versions from the registry: off the loop).
        await loop.run_in_executor(None, self._replay, history)
        replayed = len(history)
        hello = await loop.run_in_executor(None, self.controller.start, serving, override)
        await self._publish(hello)
        if self.controller.backfiller is not None:
            # A worker joining during a rollout says at once that it has a backfill to do,
            # so a promote waits for it too (its first report would otherwise come later).
            await self._publish(await loop.run_in_executor(None, self.controller.progress_messages))
        log.info("control topic replayed (%d messages): %s", replayed, self.controller.describe())

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def between_batches(self, loop: asyncio.AbstractEventLoop, executor: Executor) -> None:
        assert self.consumer is not None
        fetched = await self.consumer.getmany(timeout_ms=0)
        for messages in fetched.values():
            for record in messages:
                message = self._decode(record.value)
                if message is None:
                    continue
                refused_before = self.controller.state.ignored.copy()
                outgoing = await loop.run_in_executor(executor, self.controller.apply, message)
                self._count_refusals(refused_before)
                await self._publish(outgoing)
                if outgoing:
                    self._reported_complete = False
        backfiller = self.controller.backfiller
        now = time.monotonic()
        if backfiller is not self._backfiller:  # a new backfill: the rate budget starts now
            self._backfiller, self._last_backfill = backfiller, now
        if backfiller is not None and not self._reported_complete:
            forward = self.controller.forward
            if forward is not None and not forward.complete:
                # The forward fill first, at full speed (a matrix product per chunk): the
                # rate bounds the native backfill, which starts its budget afterwards.
                await loop.run_in_executor(executor, forward.step, BACKFILL_CHUNK)
                self._last_backfill = now
            else:
                limit = BACKFILL_CHUNK
                if self.backfill_rate or self.controller.state.rate:
                    rate = float(self.controller.state.rate or self.backfill_rate or 0)
                    limit = min(BACKFILL_CHUNK, int(rate * (now - self._last_backfill)))
                if limit > 0:
                    self._last_backfill = now
                    await loop.run_in_executor(executor, backfiller.step, limit)
            # One reading serves both: what is published is what "complete" was decided on.
            progress = await loop.run_in_executor(executor, self.controller.progress)
            complete = all(p.complete for p in progress.values())
            if now - self._last_progress >= 1.0 or complete:
                self._last_progress = now
                await self._publish(self.controller.progress_messages(progress))
                self._reported_complete = complete

    def _replay(self, history: list[dict[str, Any]]) -> None:
        before = self.controller.state.ignored.copy()
        for message in history:
            self.controller.replay(message)
        self._count_refusals(before)

    def _count_refusals(self, before: Counter[str]) -> None:
        """Count in the metrics what the fold refused or found malformed since ``before``."""
        if self.metrics is not None:
            for reason in ("malformed", "refused"):
                self.metrics.control_rejected[reason] += (
                    self.controller.state.ignored[reason] - before[reason]
                )

    def _decode(self, raw: bytes | None) -> dict[str, Any] | None:
        """A message to apply, or ``None`` (malformed, or unsigned or forged under a control
        key): such messages are never applied, only counted and logged."""
        message, reason = self.codec.decode(raw)
        if reason is not None:
            self.controller.rejected_messages += 1
            if self.metrics is not None:
                self.metrics.control_rejected[reason] += 1
            log.warning("control message ignored: %s", reason)
        return message

    async def _publish(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            # Always partition 0: the fold depends on one total order of control messages.
            await self.producer.send_and_wait(self.topic, self.codec.encode(message), partition=0)
