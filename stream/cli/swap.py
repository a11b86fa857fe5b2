"""``embstream swap``: stage, status, promote, rollback, cancel, through the control topic."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from models.registry import EncoderRegistry, version_number
from stream.kafka.topics import ensure_topics
from stream.rollout.controller import check_swappable, version_check
from stream.rollout.messages import ControlCodec, ControlError, control_message
from stream.rollout.state import RolloutState, VersionCheck
from stream.settings import Settings, SettingsError

__all__ = ["add_swap_commands", "run_swap"]


def add_swap_commands(commands: Any) -> None:
    swap = commands.add_parser("swap", help="move a running system to another encoder version")
    actions = swap.add_subparsers(dest="action", required=True, metavar="ACTION")
    stage = actions.add_parser("stage", help="dual-write and backfill version V")
    stage.add_argument("version", type=version_number)
    stage.add_argument(
        "--rate",
        type=float,
        help="native backfill: entities encoded per second (default: unlimited; not the forward fill)",
    )
    stage.add_argument(
        "--force",
        action="store_true",
        help="stage even if the compatibility gate fails or the serving version is still being backfilled",
    )
    stage.add_argument(
        "--no-forward",
        action="store_true",
        help="no forward fill: promote waits for the native backfill even with a usable forward transform",
    )
    actions.add_parser("status", help="serving and staged versions, fill progress, acks")
    promote = actions.add_parser("promote", help="make the staged version the serving version")
    promote.add_argument("--force", action="store_true", help="even if the staged version is not filled yet")
    rollback = actions.add_parser("rollback", help="serve the previous version again")
    rollback.add_argument(
        "--force",
        action="store_true",
        help="even if the previous version was retired (its vectors are stale)",
    )
    actions.add_parser("cancel", help="drop the staged version")
    retire = actions.add_parser(
        "retire", help="stop keeping a previous serving version fresh (reads at it are then carried back)"
    )
    retire.add_argument("version", type=version_number)
    for action in actions.choices.values():
        action.add_argument("--broker", help="host:port[,host:port] (default: EMBSTREAM_BROKER)")
        action.add_argument("--registry", type=Path, help="model registry (default: embstream-registry)")
        action.add_argument("--control-topic", help="control topic (default: embstream.control)")
        action.add_argument("--wait", type=float, default=15.0, help="seconds to wait for workers' acks")


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env().with_overrides(
        broker=args.broker, registry=args.registry, control_topic=args.control_topic
    )
    if not settings.broker:
        raise SettingsError("no broker: pass --broker or set EMBSTREAM_BROKER")
    return settings


def read_rollout(
    servers: list[str],
    topic: str,
    idle_s: float = 0.5,
    codec: ControlCodec | None = None,
    check: VersionCheck | None = None,
    **client_config: Any,
) -> tuple[RolloutState, list[dict]]:
    """Fold the whole control topic as workers do (with ``check``, the registry's side of
    it: :func:`stream.rollout.controller.version_check`); returns the state and every message read
    (with a control key, unsigned and forged messages are left out and counted in
    ``state.ignored``, as are malformed and refused ones)."""
    codec = codec or ControlCodec()
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        enable_auto_commit=False,
        group_id=None,
        client_id="embstream-swap",
        **client_config,
    )
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        state, messages = RolloutState(), []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            for records in consumer.poll(timeout_ms=100).values():
                for record in records:
                    message, reason = codec.decode(record.value)
                    if message is not None:
                        state.fold(message, check)
                        messages.append(message)
                    else:
                        state.ignored[reason or "malformed"] += 1
                    quiet_since = time.monotonic()
        return state, messages
    finally:
        consumer.close()


def _publish(settings: Settings, message: dict[str, Any]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=settings.broker_servers,
        client_id="embstream-swap",
        **settings.kafka_security.kafka_python(),
    )
    try:
        # Always partition 0: workers fold the control messages in one total order.
        encoded = ControlCodec(settings.control_key).encode(message)
        producer.send(settings.control_topic, encoded, partition=0).get(timeout=30)
    finally:
        producer.close()


def _await_acks(settings: Settings, message: dict[str, Any], wait_s: float) -> int:
    """Wait for workers' acks of ``message``; report them; exit status 1 if one refused it."""
    deadline = time.monotonic() + wait_s
    while True:
        _, messages = read_rollout(
            settings.broker_servers,
            settings.control_topic,
            idle_s=0.3,
            codec=ControlCodec(settings.control_key),
            **settings.kafka_security.kafka_python(),
        )
        acks = [m for m in messages if m.get("op") == "ack" and m.get("of") == message["id"]]
        if acks or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not acks:
        print(
            f"embstream: no worker acknowledged within {wait_s:.0f} s; it will apply when one "
            "reads the control topic",
            file=sys.stderr,
        )
        return 0
    failed = [a for a in acks if a.get("error")]
    for ack in acks:
        verdict = f"REFUSED: {ack['error']}" if ack.get("error") else "applied"
        print(f"embstream: worker {ack.get('worker')}: {verdict}", file=sys.stderr)
    return 1 if failed else 0


def _bar(done: int, total: int, width: int = 30) -> str:
    share = 1.0 if total == 0 else min(1.0, done / total)
    filled = int(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {share:6.1%} ({done:,}/{total:,})"


def _status(state: RolloutState, messages: list[dict]) -> dict[str, Any]:
    staged = state.staged
    progress: dict[str, dict[str, Any]] = {}
    serving_progress: dict[str, dict[str, Any]] = {}
    for (worker, version, kind), (done, total) in sorted(state.progress.items()):
        if version == staged:
            progress.setdefault(worker, {})[kind] = {"done": done, "total": total}
        elif version == state.serving and kind in ("user", "item") and done < total:
            serving_progress.setdefault(worker, {})[kind] = {"done": done, "total": total}
    workers = sorted({str(m.get("worker")) for m in messages if m.get("op") == "worker"})
    acked = sorted(state.acks.get(state.last_command_id or "", set()))
    forward = any("forward" in kinds for kinds in progress.values())
    return {
        "serving_version": state.serving,
        "staged_version": staged,
        "previous_version": state.previous,
        "retained_versions": state.retained,
        "last_command": None if state.last_command is None else state.last_command.get("op"),
        "acknowledged_by": acked,
        "workers_seen": workers,
        "backfill": progress,
        "backfill_complete": None if staged is None else state.backfill_complete(staged),
        # forward: the workers fill the staged version forward, and promote needs only that
        # fill and the item index; native: promote waits for the whole backfill
        "promote_after": None if staged is None else ("forward" if forward else "native"),
        "promotable": None if staged is None else state.promotable(staged),
        # the native backfill of the serving version, still running after an instant promote
        "serving_backfill": serving_progress,
        "ignored_messages": dict(state.ignored),
        "refused_commands": state.refused,
    }


def run_swap(args: argparse.Namespace) -> int:
    settings = _settings(args)
    security = settings.kafka_security.kafka_python()
    ensure_topics(settings.broker_servers, {settings.control_topic: 1}, **security)
    codec = ControlCodec(settings.control_key)
    registry = EncoderRegistry(settings.registry)
    if not registry.versions():
        raise ControlError(
            f"no encoder versions in the registry at {settings.registry}: pass the workers' --registry "
            "(or set EMBSTREAM_REGISTRY); commands are checked against it as the workers check them"
        )
    loaded: set[int] = set()

    def load(version: int) -> None:  # what a worker loads before acting; successes only kept
        if version not in loaded:
            registry.load(version)
            loaded.add(version)

    state, messages = read_rollout(
        settings.broker_servers,
        settings.control_topic,
        codec=codec,
        check=version_check(registry, load),
        **security,
    )
    if args.action == "status":
        status = _status(state, messages)
        if sys.stdout.isatty():
            print(
                f"serving v{status['serving_version']}  staged "
                f"{'-' if status['staged_version'] is None else 'v' + str(status['staged_version'])}  "
                f"previous {status['previous_version'] or '-'}  "
                f"retained {', '.join(f'v{v}' for v in status['retained_versions']) or '-'}"
            )
            for worker, kinds in status["backfill"].items():
                for kind, p in kinds.items():
                    print(f"  {worker} {kind:<7} {_bar(p['done'], p['total'])}")
            if status["staged_version"] is not None:
                verdict = "can be promoted" if status["promotable"] else "cannot be promoted yet"
                print(f"staged version {verdict} (after its {status['promote_after']} fill)")
            for worker, kinds in status["serving_backfill"].items():
                for kind, p in kinds.items():
                    print(f"  {worker} native {kind:<5} {_bar(p['done'], p['total'])} (serving)")
            print(f"acknowledged by: {', '.join(status['acknowledged_by']) or '-'}")
            for refusal in status["refused_commands"]:
                print(f"refused: {refusal['op']} {refusal['version']}: {refusal['reason']}")
        else:
            print(json.dumps(status, indent=2))
        return 0
    if not codec.signing and any("sig" in m for m in messages):
        raise ControlError(
            "the workers sign their control messages: set EMBSTREAM_CONTROL_KEY to their key, "
            "or they will ignore this command"
        )
    if args.action == "stage":
        if state.serving == args.version:
            raise ControlError(f"version {args.version} is already the serving version")
        if state.staged is not None and state.staged != args.version:
            raise ControlError(f"version {state.staged} is staged; promote or cancel it first")
        if _status(state, messages)["serving_backfill"] and not args.force:
            raise ControlError(
                f"version {state.serving} is still being backfilled natively after an instant promote "
                "(see `embstream swap status`); a stage now would stop that backfill and leave its "
                "forward vectors in place: stage once it is done, or --force"
            )
        check_swappable(registry, args.version, force=args.force)
        message = control_message(
            "stage", version=args.version, rate=args.rate, force=args.force, forward=not args.no_forward
        )
    elif args.action == "promote":
        if state.staged is None:
            raise ControlError("no version is staged")
        if not args.force and not state.promotable(state.staged):
            raise ControlError(
                f"version {state.staged} is not filled yet: its forward fill (or, without a usable "
                "forward transform, its backfill of users and items) has not finished, or its "
                "item index is not built yet (see `embstream swap status`; --force to promote anyway)"
            )
        message = control_message("promote", version=state.staged, force=args.force)
    elif args.action == "rollback":
        if state.previous is None or state.serving is None:
            raise ControlError("there is no previous version to roll back to")
        if state.previous not in state.retained and not args.force:
            raise ControlError(
                f"version {state.previous} was retired: its vectors stopped following events then, "
                "and serving it would answer them stale (stage it again to backfill it; "
                "--force to roll back anyway)"
            )
        message = control_message("rollback", **{"from": state.serving, "to": state.previous})
    elif args.action == "retire":
        if args.version not in state.retained:
            raise ControlError(
                f"version {args.version} is not kept fresh "
                f"(retained previous versions: {state.retained or 'none'})"
            )
        message = control_message("retire", version=args.version)
        print(
            f"embstream: workers stop writing version {args.version} on every refresh: one encoder pass "
            f"and one vector write less per refreshed entity; reads at version {args.version} carry "
            "the serving vector back through the aligners from now on (source: aligned)",
            file=sys.stderr,
        )
    else:
        if state.staged is None:
            raise ControlError("no version is staged")
        message = control_message("cancel", version=state.staged)
    _publish(settings, message)
    shown = {key: value for key, value in message.items() if key not in ("id", "ts")}
    print(f"embstream: {args.action} published {json.dumps(shown)}", file=sys.stderr)
    return _await_acks(settings, message, args.wait)
