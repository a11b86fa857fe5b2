"""The event contract: parse and validate one interaction event, or say why it is rejected.

Value: JSON ``{"user_id": str, "item_id": str, "type": one of EVENT_TYPES,
"value": number (optional), "ts": epoch ms (optional), "item_tags": [str] (optional)}``.
``item_tags`` declares what the item is (genres, categories: at most
:data:`~models.features.MAX_ITEM_TAGS` strings of 1 to
:data:`~models.features.MAX_TAG_LENGTH` characters); it replaces the item's tags, ``[]``
clears them, and events without it leave them as they are. Unknown extra fields are ignored.

Nothing a producer sends can make :func:`parse_event` raise or recurse without bound: a
value is bounded in size (``max_bytes``) and in nesting depth (:data:`MAX_EVENT_DEPTH`,
measured before anything recursive reads it), duplicate top-level keys are a rejection (a
last-wins reading could apply an event to a user its record key does not name), and any
exception a decoder still raises becomes a rejection too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import UNSET, UnsetType

from models.features import EVENT_TYPES, MAX_ITEM_TAGS, MAX_TAG_LENGTH, TYPE_CODES, check_item_tags

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_EVENT_DEPTH",
    "MAX_ID_LENGTH",
    "MIN_TIMESTAMP_MS",
    "Interaction",
    "Rejection",
    "parse_event",
]

MAX_ID_LENGTH = 256
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
#: Default bound on a record's value (``EMBSTREAM_MAX_EVENT_BYTES``); events are ~100 bytes.
MAX_EVENT_BYTES = 65_536
#: Objects and arrays nest at most this deep (the contract's own fields are flat).
MAX_EVENT_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Interaction:
    user_id: str
    item_id: str
    type_code: int
    value: float | None
    ts_ms: int
    item_tags: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str


_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_Tags = Annotated[
    list[Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TAG_LENGTH)]],
    msgspec.Meta(max_length=MAX_ITEM_TAGS),
]


class _WireEvent(msgspec.Struct):
    """The contract as a typed schema: msgspec checks it while decoding, in C. ``UNSET``
    tells an absent optional field from one given as ``null``."""

    user_id: _Id
    item_id: _Id
    type: Literal["view", "click", "cart", "purchase", "rating"]
    value: int | float | UnsetType | None = UNSET
    ts: int | UnsetType | None = UNSET
    item_tags: _Tags | UnsetType | None = UNSET


_decode_wire = msgspec.json.Decoder(_WireEvent).decode
#: JSON strings (escapes included), removed before brackets are counted for depth.
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+"')

#: Values are stored as float32: a larger magnitude would become infinity there.
MAX_VALUE = float(np.finfo(np.float32).max)


def _finite_float(number: int | float) -> float | None:
    """``number`` as a float if it is finite within float32's range, else ``None``."""
    try:
        value = float(number)
    except OverflowError:
        return None
    return value if math.isfinite(value) and abs(value) <= MAX_VALUE else None


def parse_event(
    raw: bytes | None,
    broker_ts_ms: int,
    now_ms: int,
    max_future_skew_ms: int,
    max_bytes: int = MAX_EVENT_BYTES,
) -> Interaction | Rejection:
    """Validate one record value; never raises, whatever ``raw`` holds.

    The common case (a valid, ASCII event of the contract's fields only) is decoded and
    type-checked in one msgspec call, with a count of its quotes proving it has no key
    beyond the fields msgspec read (so none twice); an event with extra fields but no
    nesting has its keys listed once by a regular expression. Anything else goes through
    the field-by-field checks of :func:`_parse_checked`, which decide (and name the
    reason). The fast paths never accept what those checks refuse.
    """
    try:
        if raw is not None and len(raw) <= max_bytes and raw.isascii() and 92 not in raw:  # 92: "\\"
            try:
                wire = _decode_wire(raw)
            except (msgspec.MsgspecError, ValueError, RecursionError):
                pass
            else:
                value, ts, tags = wire.value, wire.ts, wire.item_tags
                # Keys, the three string fields and the tags are the only strings of an event
                # without extra fields: then no key was given twice.
                strings = 6 + (value is not UNSET) + (ts is not UNSET)
                if tags is not UNSET:
                    strings += 1 + (len(tags) if tags else 0)
                if raw.count(34) == 2 * strings or _flat_keys_once(raw):  # 34: '"'
                    if value is UNSET or value is None:
                        number = None
                    else:
                        number = _finite_float(value)
                        if number is None:
                            return _parse_checked(raw, broker_ts_ms, now_ms, max_future_skew_ms, max_bytes)
                    if ts is UNSET or ts is None:
                        ts = broker_ts_ms
                    if MIN_TIMESTAMP_MS <= ts <= now_ms + max_future_skew_ms:
                        return Interaction(
                            wire.user_id,
                            wire.item_id,
                            TYPE_CODES[wire.type],
                            number,
                            ts,
                            None if tags is UNSET or tags is None else tuple(tags),
                        )
        return _parse_checked(raw, broker_ts_ms, now_ms, max_future_skew_ms, max_bytes)
    except Exception as error:  # a decoder's own failure must never stop the stream
        return Rejection(f"value could not be decoded ({type(error).__name__})")


def _flat_keys_once(raw: bytes) -> bool:
    """Whether ``raw`` (ASCII, no backslash) is a flat object whose keys are distinct;
    ``False`` sends nested values to the careful path, which sorts them out."""
    if raw.count(b"{") != 1 or b"[" in raw:
        return False
    # Without backslashes every quote delimits a string: between quotes alternate structure
    # and string contents, and a string is a key when a colon follows it.
    parts = raw.split(b'"')
    keys = [parts[i] for i in range(1, len(parts) - 1, 2) if parts[i + 1].lstrip()[:1] == b":"]
    return len(keys) == len(set(keys))


def _too_deep(raw: bytes) -> bool:
    """Whether objects and arrays in ``raw`` nest deeper than :data:`MAX_EVENT_DEPTH`,
    found without recursion (strings removed, then a running count of brackets)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_EVENT_DEPTH:
        return False
    codes = np.frombuffer(_STRINGS.sub(b"", raw), dtype=np.uint8)
    step = ((codes == ord("[")) | (codes == ord("{"))).astype(np.int32)
    step -= ((codes == ord("]")) | (codes == ord("}"))).astype(np.int32)
    return bool(step.size) and int(np.cumsum(step).max()) > MAX_EVENT_DEPTH


class _DuplicateKey(ValueError):
    pass


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Every JSON object, nested or not: its keys must be distinct."""
    decoded = dict(pairs)
    if len(decoded) != len(pairs):
        raise _DuplicateKey
    return decoded


def _check_id(event: dict[str, object], name: str) -> str | Rejection:
    value = event.get(name)
    if not isinstance(value, str):
        return Rejection(f"{name} missing or not a string")
    if not value or len(value) > MAX_ID_LENGTH:
        return Rejection(f"{name} must have 1 to {MAX_ID_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written as an escape (\ud800)
        return Rejection(f"{name} is not valid Unicode")
    return value


def _parse_checked(
    raw: bytes | None,
    broker_ts_ms: int,
    now_ms: int,
    max_future_skew_ms: int,
    max_bytes: int = MAX_EVENT_BYTES,
) -> Interaction | Rejection:
    """The definition of the contract, one check at a time (the slow path)."""
    if raw is None:
        return Rejection("empty value")
    if len(raw) > max_bytes:
        return Rejection(f"value larger than {max_bytes} bytes")
    if _too_deep(raw):
        return Rejection(f"value nested deeper than {MAX_EVENT_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection("value is not JSON (invalid UTF-8)")
    try:
        event = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constants)
    except _DuplicateKey:
        return Rejection("duplicate field")
    except (ValueError, RecursionError):
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
    tags = event.get("item_tags")
    if tags is not None:
        tags = check_item_tags(tags)
        if isinstance(tags, str):
            return Rejection(tags)
    return Interaction(user_id, item_id, type_code, value, ts, tags)
