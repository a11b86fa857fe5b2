"""The event contract: parse and validate one interaction event, or say why it is rejected.

Value: JSON ``{"user_id": str, "item_id": str, "type": one of EVENT_TYPES,
"value": number (optional), "ts": epoch ms (optional)}``. Extra fields are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
import numpy as np
import orjson

from models.features import EVENT_TYPES, TYPE_CODES

__all__ = ["MAX_ID_LENGTH", "MIN_TIMESTAMP_MS", "Interaction", "Rejection", "parse_event"]

MAX_ID_LENGTH = 256
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Interaction:
    user_id: str
    item_id: str
    type_code: int
    value: float | None
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str


_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]


class _WireEvent(msgspec.Struct):
    """The contract as a typed schema: msgspec checks it while decoding, in C."""

    user_id: _Id
    item_id: _Id
    type: Literal["view", "click", "cart", "purchase", "rating"]
    value: int | float | None = None
    ts: int | None = None


_decode_wire = msgspec.json.Decoder(_WireEvent).decode


#: Values are stored as float32: a larger magnitude would become infinity there.
MAX_VALUE = float(np.finfo(np.float32).max)


def _finite_float(number: int | float) -> float | None:
    """``number`` as a float if it is finite within float32's range, else ``None``."""
    try:
        value = float(number)
    except OverflowError:
        return None
    return value if math.isfinite(value) and abs(value) <= MAX_VALUE else None


def _check_id(event: dict[str, object], name: str) -> str | Rejection:
    value = event.get(name)
    if not isinstance(value, str):
        return Rejection(f"{name} missing or not a string")
    if not value or len(value) > MAX_ID_LENGTH:
        return Rejection(f"{name} must have 1 to {MAX_ID_LENGTH} characters")
    return value


def parse_event(
    raw: bytes | None, broker_ts_ms: int, now_ms: int, max_future_skew_ms: int
) -> Interaction | Rejection:
    """Validate one record value; never raises on bad input.

    The common case (a valid event) is decoded and type-checked in one msgspec call; any
    event it does not accept goes through the field-by-field checks below, which decide
    (and name the reason). The fast path never accepts what those checks refuse.
    """
    if raw is not None and raw.isascii():  # msgspec skips unknown keys without checking their UTF-8
        try:
            wire = _decode_wire(raw)
        except (msgspec.MsgspecError, ValueError):
            pass
        else:
            value = None if wire.value is None else _finite_float(wire.value)
            ts = broker_ts_ms if wire.ts is None else wire.ts
            finite = wire.value is None or value is not None
            if finite and MIN_TIMESTAMP_MS <= ts <= now_ms + max_future_skew_ms:
                return Interaction(wire.user_id, wire.item_id, TYPE_CODES[wire.type], value, ts)
    return _parse_checked(raw, broker_ts_ms, now_ms, max_future_skew_ms)


def _parse_checked(
    raw: bytes | None, broker_ts_ms: int, now_ms: int, max_future_skew_ms: int
) -> Interaction | Rejection:
    if raw is None:
        return Rejection("empty value")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Rejection("value is not JSON")
    if not isinstance(event, dict):
        return Rejection("value is not a JSON object")
    user_id = _check_id(event, "user_id")
    if isinstance(user_id, Rejection):
        return user_id
    item_id = _check_id(event, "item_id")
    if isinstance(item_id, Rejection):
        return item_id
    event_type = event.get("type")
    type_code = TYPE_CODES.get(event_type) if isinstance(event_type, str) else None
    if type_code is None:
        return Rejection(f"type must be one of {', '.join(EVENT_TYPES)}")
    value = event.get("value")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return Rejection("value must be a number")
        value = _finite_float(value)
        if value is None:
            return Rejection("value must be finite and within float32 range (|value| <= 3.4e38)")
    ts = event.get("ts", broker_ts_ms)
    if ts is None:
        ts = broker_ts_ms
    if isinstance(ts, bool) or not isinstance(ts, int):
        return Rejection("ts must be an integer (epoch milliseconds)")
    if ts < MIN_TIMESTAMP_MS or ts > now_ms + max_future_skew_ms:
        return Rejection("ts is out of range (before 2000 or too far in the future)")
    return Interaction(user_id, item_id, type_code, value, ts)
