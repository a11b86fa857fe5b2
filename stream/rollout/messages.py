"""Control messages: what ``embstream swap`` and workers write on the control topic.

Messages are JSON objects with an ``op`` and an ``id``:

- ``{"op": "stage", "version": V, "rate": R | null, "force": bool, "forward": bool}``:
  refresh with the serving version and also write V; fill V forward first when it has a
  usable forward transform (unless ``forward`` is false), then backfill every known entity
  with V (at most R encoded per second).
- ``{"op": "promote", "version": V, "force": bool}``: V becomes the serving version.
- ``{"op": "rollback", "from": V, "to": W}``: the serving version goes back from V to W.
- ``{"op": "cancel", "version": V}``: drop a staged version.
- ``{"op": "retire", "version": P}``: stop keeping a previous serving version fresh.
- ``{"op": "ack", "worker": …, "of": message id, "error": reason?}``,
  ``{"op": "progress", "worker": …, "version": V, "kind": …, "done": n, "total": m}`` and
  ``{"op": "worker", "worker": …, "serving": V, "override": bool}``: what workers report.

Each op has a schema (:func:`malformed_reason`); fields beyond it are allowed and ignored.
With a control key (``EMBSTREAM_CONTROL_KEY``), every message carries ``"sig"``: the hex
HMAC-SHA256, under the key, of the message without ``sig`` serialised as JSON with sorted
keys and no spaces; readers holding the key drop (and count) messages that are unsigned or
whose signature does not match (:class:`ControlCodec`). The state they fold into is
:mod:`stream.rollout.state`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from typing import Annotated, Any

import msgspec
import orjson

from stream.errors import ControlError

__all__ = [
    "COMMANDS",
    "ControlCodec",
    "ControlError",
    "control_message",
    "malformed_reason",
]


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
COMMANDS = frozenset({"stage", "promote", "rollback", "cancel", "retire"})

_Version = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
_Count = Annotated[int, msgspec.Meta(ge=0)]
_Text = Annotated[str, msgspec.Meta(max_length=1024)]


class _Stage(msgspec.Struct):
    id: _Text
    version: _Version
    rate: Annotated[float, msgspec.Meta(gt=0)] | None = None
    force: bool = False
    forward: bool = True  # false: no forward fill (promote waits for the native backfill)


class _Promote(msgspec.Struct):
    id: _Text
    version: _Version
    force: bool = False


class _Rollback(msgspec.Struct):
    id: _Text
    source: _Version = msgspec.field(name="from")
    to: _Version


class _Cancel(msgspec.Struct):
    id: _Text
    version: _Version


class _Ack(msgspec.Struct):
    worker: _Text
    of: _Text


class _Progress(msgspec.Struct):
    worker: _Text
    version: _Version
    kind: _Text
    done: _Count
    total: _Count


class _Hello(msgspec.Struct):
    worker: _Text
    serving: _Version
    override: bool = False


_SCHEMAS: dict[str, type[msgspec.Struct]] = {
    "stage": _Stage,
    "promote": _Promote,
    "rollback": _Rollback,
    "cancel": _Cancel,
    "retire": _Cancel,
    "ack": _Ack,
    "progress": _Progress,
    "worker": _Hello,
}


def malformed_reason(message: dict[str, Any]) -> str | None:
    """Why ``message`` does not follow its op's schema (``None``: it does). Fields beyond the
    schema (``ts``, ``sig``, an ack's ``error``) are allowed and left alone."""
    schema = _SCHEMAS.get(message.get("op"))  # type: ignore[arg-type]
    if schema is None:
        return f"unknown op {str(message.get('op'))[:40]!r}"
    try:
        msgspec.convert(message, schema)
    except (msgspec.ValidationError, RecursionError) as error:
        return str(error)[:200]
    return None
