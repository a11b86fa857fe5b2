"""The event contract: parse and validate one interaction event, or say why it is rejected.

Value: JSON ``{"user_id": str, "item_id": str, "type": one of EVENT_TYPES,
"value": number (optional), "ts": epoch ms (optional)}``. Extra fields are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    """Validate one record value; never raises on bad input."""
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
        if not math.isfinite(value):
            return Rejection("value must be finite")
        value = float(value)
    ts = event.get("ts", broker_ts_ms)
    if ts is None:
        ts = broker_ts_ms
    if isinstance(ts, bool) or not isinstance(ts, int):
        return Rejection("ts must be an integer (epoch milliseconds)")
    if ts < MIN_TIMESTAMP_MS or ts > now_ms + max_future_skew_ms:
        return Rejection("ts is out of range (before 2000 or too far in the future)")
    return Interaction(user_id, item_id, type_code, value, ts)
