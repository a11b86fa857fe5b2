"""The control plane: swap commands as messages on a Kafka topic that every worker reads.

Messages are JSON objects with an ``op`` and an ``id``. Applying the whole topic from the
start, in order, always gives the same :class:`RolloutState`, and applying a message twice
changes nothing, so a worker restarted in the middle of a rollout resumes it in the right
state by replaying the topic.

- ``{"op": "stage", "version": V, "rate": R | null}``: refresh with the serving version and
  also write V; backfill every known entity with V (at most R entities/s).
- ``{"op": "promote", "version": V}``: V becomes the serving version; workers refresh with V.
- ``{"op": "rollback", "from": V, "to": W}``: the serving version goes back from V to W.
- ``{"op": "cancel", "version": V}``: drop a staged version.
- ``{"op": "ack", "worker": …, "of": message id}`` and
  ``{"op": "progress", "worker": …, "version": V, "kind": …, "done": n, "total": m}``: what
  workers report back.

With a control key (``EMBSTREAM_CONTROL_KEY``), every message carries ``"sig"``: the
hex HMAC-SHA256, under the key, of the message without ``sig`` serialised as JSON with
sorted keys and no spaces. Readers holding the key drop (and count) messages that are
unsigned or whose signature does not match; see :class:`ControlCodec`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["ControlCodec", "ControlError", "RolloutState", "control_message", "decode_control"]


class ControlError(ValueError):
    """A control command cannot be carried out."""


def control_message(op: str, **fields: Any) -> dict[str, Any]:
    return {"op": op, "id": uuid.uuid4().hex, "ts": int(time.time() * 1000), **fields}


def decode_control(raw: bytes | None) -> dict[str, Any] | None:
    """A control message, or ``None`` for anything malformed (counted, never applied)."""
    try:
        message = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        return None
    return message


class ControlCodec:
    """Control messages to and from bytes, signed and checked when a key is set.

    :meth:`decode` returns ``(message, None)`` or ``(None, reason)`` with reason
    ``"malformed"``, ``"unsigned"`` or ``"forged"``. Without a key every well-formed message
    is accepted (and a ``sig`` on it ignored).
    """

    def __init__(self, key: str | bytes | None = None) -> None:
        self._key = key.encode() if isinstance(key, str) else key
        if self._key == b"":
            self._key = None

    @property
    def signing(self) -> bool:
        return self._key is not None

    def _signature(self, message: dict[str, Any]) -> str:
        assert self._key is not None
        unsigned = {name: value for name, value in message.items() if name != "sig"}
        payload = orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def encode(self, message: dict[str, Any]) -> bytes:
        if self._key is not None:
            message = {**message, "sig": self._signature(message)}
        return orjson.dumps(message)

    def decode(self, raw: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
        message = decode_control(raw)
        if message is None:
            return None, "malformed"
        if self._key is None:
            return message, None
        signature = message.get("sig")
        if signature is None:
            return None, "unsigned"
        try:
            expected = self._signature(message)
        except (TypeError, orjson.JSONEncodeError):  # e.g. nested deeper than orjson writes
            return None, "malformed"
        if not isinstance(signature, str) or not hmac.compare_digest(
            signature.encode("utf-8", "surrogateescape"), expected.encode()
        ):
            return None, "forged"
        return message, None


#: Operator commands (as opposed to workers' acks, progress and hellos).
COMMANDS = frozenset({"stage", "promote", "rollback", "cancel"})


@dataclass
class RolloutState:
    """Serving, staged and previous versions, folded from the control topic."""

    serving: int | None = None
    staged: int | None = None
    previous: int | None = None
    rate: float | None = None
    acks: dict[str, set[str]] = field(default_factory=dict)  # message id -> workers
    #: version -> id of the command that staged it: the workers that acknowledged that
    #: command must all finish the backfill before promote (not only those that reported).
    stage_ids: dict[int, str] = field(default_factory=dict)
    progress: dict[tuple[str, int, str], tuple[int, int]] = field(default_factory=dict)
    last_command_id: str | None = None
    last_command: dict[str, Any] | None = None
    #: Ids of every command seen: a command is acted on once, so re-sending an old (even
    #: signed) command changes nothing. Deterministic, since every reader folds the whole topic.
    seen_commands: set[str] = field(default_factory=set)
    #: Messages a reader left out, by reason (malformed, unsigned, forged); not folded.
    ignored: Counter[str] = field(default_factory=Counter)

    def apply(self, message: dict[str, Any]) -> bool:
        """Apply one message; returns True when the serving or staged version changed."""
        op = message.get("op")
        version = message.get("version")
        before = (self.serving, self.staged)
        if op in COMMANDS:
            command_id = str(message.get("id"))
            if command_id in self.seen_commands:
                return False  # a re-sent command: acted on (or refused) the first time
            self.seen_commands.add(command_id)
        if op == "ack":
            self.acks.setdefault(str(message.get("of")), set()).add(str(message.get("worker")))
            return False
        if op == "worker":  # a worker's hello: the serving version it started with
            if isinstance(message.get("serving"), int) and (self.serving is None or message.get("override")):
                self.serving = int(message["serving"])
            return False
        if op == "progress":
            key = (str(message.get("worker")), int(message.get("version", 0)), str(message.get("kind")))
            self.progress[key] = (int(message.get("done", 0)), int(message.get("total", 0)))
            return False
        if op == "stage" and isinstance(version, int) and version != self.serving:
            if self.staged != version:
                self.staged, self.rate = version, message.get("rate")
                self.stage_ids[version] = str(message.get("id"))
        elif op == "promote" and isinstance(version, int) and self.serving != version:
            if self.staged == version or message.get("force"):
                self.previous, self.serving, self.staged = self.serving, version, None
        elif op == "rollback" and message.get("from") == self.serving and isinstance(message.get("to"), int):
            self.serving, self.previous, self.staged = int(message["to"]), None, None
        elif op == "cancel" and self.staged == version:
            self.staged = None
        else:
            return False
        self.last_command_id, self.last_command = str(message.get("id")), message
        return (self.serving, self.staged) != before

    def backfill_complete(self, version: int, kinds: tuple[str, ...] = ("user", "item")) -> bool:
        """Every worker that acknowledged the stage of ``version`` or reported on it has
        finished every kind, and its item index where it reports one (a worker that
        acknowledged and has not reported yet is not done)."""
        reports = {(w, k): dp for (w, v, k), dp in self.progress.items() if v == version}
        workers = {w for w, _ in reports} | self.acks.get(self.stage_ids.get(version, ""), set())
        # Kinds a worker reports beyond those required (its item index) must be done too.
        wanted = {(w, k) for w in workers for k in kinds} | set(reports)
        return bool(workers) and all(
            pair in reports and reports[pair][0] >= reports[pair][1] for pair in wanted
        )
