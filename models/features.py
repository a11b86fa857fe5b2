"""Entity state kept by the stream and the encoder inputs derived from it.

Training and refresh both build encoder inputs from these classes, so an embedding computed
live is computed from exactly the features the encoder was trained on.

- :class:`UserState`: the user's most recent interactions (a window, default 50).
- :class:`ItemState`: interaction counts per event type, exponentially decayed with time
  constants of 1 hour, 24 hours and 7 days (an order-independent sliding count), lifetime
  totals per type, first and last seen, and the item's tags (up to :data:`MAX_ITEM_TAGS`
  declared attributes such as genres, as 64-bit hashes; the latest event that carries
  ``item_tags`` sets them).

Both serialise to compact binary (``to_bytes`` / ``from_bytes``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from models.hashing import id_hash64

__all__ = [
    "EVENT_TYPES",
    "ITEM_FEATURES",
    "MAX_ITEM_TAGS",
    "MAX_TAG_LENGTH",
    "WINDOWS_SECONDS",
    "ItemInput",
    "ItemState",
    "UserInput",
    "UserState",
    "check_item_tags",
    "tag_hashes",
]

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase", "rating")
TYPE_CODES = {name: code for code, name in enumerate(EVENT_TYPES)}
WINDOWS_SECONDS: tuple[int, ...] = (3_600, 86_400, 604_800)
ITEM_FEATURES = len(EVENT_TYPES) * len(WINDOWS_SECONDS) + len(EVENT_TYPES)

_USER_HEADER = struct.Struct("<BIQ")  # format 1: format, lifetime count, last ts
_USER_ENTRY = struct.Struct("<QBfH")  # format 1: ts, type code, value (NaN if none), id length
#: Header of user state formats 2 and 3: format, lifetime count, last ts, entries.
USER_STATE_HEADER = struct.Struct("<BIQH")
USER_STATE_FORMAT = 3
_ITEM_FORMAT = struct.Struct(f"<BQ{len(EVENT_TYPES) * len(WINDOWS_SECONDS)}d{len(EVENT_TYPES)}IQQ")
#: An item declares at most this many tags; each has 1 to :data:`MAX_TAG_LENGTH` characters.
MAX_ITEM_TAGS = 8
MAX_TAG_LENGTH = 64
#: Item state format 2: format 1, then :data:`MAX_ITEM_TAGS` tag hashes (0: no tag). An item
#: without tags is still written in format 1, byte for byte as before.
_ITEM_TAGS = struct.Struct(f"<{MAX_ITEM_TAGS}Q")


def check_item_tags(tags: object) -> tuple[str, ...] | str:
    """An event's ``item_tags`` as a tuple, or the reason it breaks the contract (a list of
    at most :data:`MAX_ITEM_TAGS` strings of 1 to :data:`MAX_TAG_LENGTH` characters, each
    valid Unicode). The stream's event parser and the training log reader both use it."""
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        return "item_tags must be a list of strings"
    if len(tags) > MAX_ITEM_TAGS:
        return f"item_tags has more than {MAX_ITEM_TAGS} tags"
    if not all(1 <= len(tag) <= MAX_TAG_LENGTH for tag in tags):
        return f"an item tag must have 1 to {MAX_TAG_LENGTH} characters"
    try:
        for tag in tags:
            tag.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written as an escape (\ud800)
        return "item_tags is not valid Unicode"
    return tuple(tags)


def tag_hashes(tags: Sequence[str]) -> tuple[int, ...]:
    """The item tags as stored: 64-bit hashes (never 0, which marks no tag), duplicates
    dropped, in order, at most :data:`MAX_ITEM_TAGS`."""
    hashes = dict.fromkeys(id_hash64("tag", tag) or 1 for tag in tags)
    return tuple(hashes)[:MAX_ITEM_TAGS]


@dataclass(frozen=True)
class UserInput:
    """What the user tower reads: the id and the recent interactions, oldest first."""

    user_id: str
    item_ids: tuple[str, ...]
    type_codes: tuple[int, ...]
    values: tuple[float, ...]
    timestamps_ms: tuple[int, ...]


@dataclass(frozen=True)
class ItemInput:
    """What the item tower reads: the id, :data:`ITEM_FEATURES` raw counts (decayed counts
    per type and window, then lifetime totals per type; the tower sees ``log1p`` of them) and
    the hashes of the item's tags (:func:`tag_hashes`; read by towers that declare them)."""

    item_id: str
    counts: tuple[float, ...]
    tags: tuple[int, ...] = ()

    @property
    def features(self) -> tuple[float, ...]:
        return tuple(math.log1p(value) for value in self.counts)


@dataclass
class UserState:
    """A window of the user's most recent interactions, oldest first."""

    window: int = 50
    item_ids: list[str] = field(default_factory=list)
    type_codes: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    timestamps_ms: list[int] = field(default_factory=list)
    count: int = 0
    last_ts_ms: int = 0

    def add(self, item_id: str, type_code: int, value: float | None, ts_ms: int) -> None:
        """Insert one interaction in time order, dropping the oldest beyond the window."""
        position = len(self.timestamps_ms)
        while position > 0 and self.timestamps_ms[position - 1] > ts_ms:
            position -= 1
        self.item_ids.insert(position, item_id)
        self.type_codes.insert(position, type_code)
        self.values.insert(position, math.nan if value is None else float(value))
        self.timestamps_ms.insert(position, ts_ms)
        self._trim()
        self.count += 1
        self.last_ts_ms = max(self.last_ts_ms, ts_ms)

    def to_input(self, user_id: str) -> UserInput:
        return UserInput(
            user_id,
            tuple(self.item_ids),
            tuple(self.type_codes),
            tuple(self.values),
            tuple(self.timestamps_ms),
        )

    def to_bytes(self) -> bytes:
        """Columnar binary (format 3): header, then timestamps, codes, values, id lengths,
        64-bit item id hashes, ids. :mod:`models.state_batch` reads and writes the same."""
        ids = [item_id.encode("utf-8") for item_id in self.item_ids]
        n = len(ids)
        return b"".join(
            (
                USER_STATE_HEADER.pack(USER_STATE_FORMAT, self.count, self.last_ts_ms, n),
                struct.pack(f"<{n}Q", *self.timestamps_ms),
                bytes(self.type_codes),
                struct.pack(f"<{n}f", *self.values),
                struct.pack(f"<{n}H", *map(len, ids)),
                struct.pack(f"<{n}Q", *(id_hash64("item", item_id) for item_id in self.item_ids)),
                *ids,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, window: int = 50) -> UserState:
        if data[0] == 1:
            return cls._from_bytes_v1(data, window)
        fmt, count, last_ts, n = USER_STATE_HEADER.unpack_from(data, 0)
        if fmt not in (2, USER_STATE_FORMAT):
            raise ValueError(f"unknown user state format {fmt}")
        offset = USER_STATE_HEADER.size
        stamps = list(struct.unpack_from(f"<{n}Q", data, offset))
        offset += 8 * n
        codes = list(data[offset : offset + n])
        offset += n
        values = list(struct.unpack_from(f"<{n}f", data, offset))
        offset += 4 * n
        lengths = struct.unpack_from(f"<{n}H", data, offset)
        offset += 2 * n
        if fmt == USER_STATE_FORMAT:
            offset += 8 * n  # the item id hashes: derived from the ids, not needed here
        blob = data[offset:]
        ends = list(accumulate(lengths))
        if blob.isascii():  # the common case: one decode, then character slices
            text = blob.decode("ascii")
            ids = [text[end - length : end] for length, end in zip(lengths, ends, strict=True)]
        else:
            ids = [
                blob[end - length : end].decode("utf-8") for length, end in zip(lengths, ends, strict=True)
            ]
        state = cls(window, ids, codes, values, stamps, count, last_ts)
        state._trim()
        return state

    @classmethod
    def _from_bytes_v1(cls, data: bytes, window: int) -> UserState:
        _, count, last_ts = _USER_HEADER.unpack_from(data, 0)
        state = cls(window=window, count=count, last_ts_ms=last_ts)
        offset = _USER_HEADER.size
        while offset < len(data):
            ts, code, value, length = _USER_ENTRY.unpack_from(data, offset)
            offset += _USER_ENTRY.size
            state.item_ids.append(data[offset : offset + length].decode("utf-8"))
            offset += length
            state.type_codes.append(code)
            state.values.append(value)
            state.timestamps_ms.append(ts)
        state._trim()
        return state

    def _trim(self) -> None:
        """Drop the oldest entries beyond the window (it may have shrunk since written)."""
        excess = len(self.item_ids) - self.window
        if excess > 0:
            del self.item_ids[:excess], self.type_codes[:excess]
            del self.values[:excess], self.timestamps_ms[:excess]


@dataclass
class ItemState:
    """Decayed interaction counts per (type, window), lifetime totals, first and last seen.

    ``decayed[t * W + w]`` is ``sum(exp(-(ref - ts_i) / tau_w))`` over the item's events of
    type ``t``, evaluated at ``ref_ts_ms`` (the latest event time seen). The sum does not
    depend on the order in which events arrive.
    """

    ref_ts_ms: int = 0
    decayed: list[float] = field(default_factory=lambda: [0.0] * (len(EVENT_TYPES) * len(WINDOWS_SECONDS)))
    totals: list[int] = field(default_factory=lambda: [0] * len(EVENT_TYPES))
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    tags: tuple[int, ...] = ()

    def set_tags(self, tags: Sequence[str]) -> None:
        """Declare the item's tags (replacing the ones it had; empty: none)."""
        self.tags = tag_hashes(tags)

    def add(self, type_code: int, ts_ms: int) -> None:
        windows = len(WINDOWS_SECONDS)
        if self.totals == [0] * len(EVENT_TYPES) and self.ref_ts_ms == 0:
            self.ref_ts_ms = self.first_seen_ms = self.last_seen_ms = ts_ms
        if ts_ms > self.ref_ts_ms:
            elapsed = (ts_ms - self.ref_ts_ms) / 1000.0
            factors = [math.exp(-elapsed / tau) for tau in WINDOWS_SECONDS]
            for index in range(len(self.decayed)):
                self.decayed[index] *= factors[index % windows]
            self.ref_ts_ms = ts_ms
        age = (self.ref_ts_ms - ts_ms) / 1000.0
        base = type_code * windows
        for w, tau in enumerate(WINDOWS_SECONDS):
            self.decayed[base + w] += math.exp(-age / tau)
        self.totals[type_code] += 1
        self.first_seen_ms = min(self.first_seen_ms, ts_ms)
        self.last_seen_ms = max(self.last_seen_ms, ts_ms)

    def add_many(self, events: list[tuple[int, int]]) -> None:
        """Apply several ``(type_code, ts_ms)`` events at once; same result as :meth:`add`.

        The counters are decayed once to the newest time, and each event adds its own
        decayed contribution, instead of decaying all counters at every event.
        """
        if not events:
            return
        newest = max(ts for _, ts in events)
        if self.totals == [0] * len(EVENT_TYPES) and self.ref_ts_ms == 0:
            self.ref_ts_ms = self.first_seen_ms = self.last_seen_ms = newest
        windows = len(WINDOWS_SECONDS)
        if newest > self.ref_ts_ms:
            elapsed = (newest - self.ref_ts_ms) / 1000.0
            factors = [math.exp(-elapsed / tau) for tau in WINDOWS_SECONDS]
            self.decayed = [value * factors[index % windows] for index, value in enumerate(self.decayed)]
            self.ref_ts_ms = newest
        reference = self.ref_ts_ms
        for type_code, ts_ms in events:
            age = (reference - ts_ms) / 1000.0
            base = type_code * windows
            for w, tau in enumerate(WINDOWS_SECONDS):
                self.decayed[base + w] += math.exp(-age / tau)
            self.totals[type_code] += 1
        self.first_seen_ms = min(self.first_seen_ms, min(ts for _, ts in events))
        self.last_seen_ms = max(self.last_seen_ms, newest)

    def to_input(self, item_id: str) -> ItemInput:
        return ItemInput(item_id, (*self.decayed, *self.totals), self.tags)

    def to_bytes(self) -> bytes:
        """Format 1 (fixed size), or format 2 (format 1 plus the tag hashes) with tags."""
        counts = _ITEM_FORMAT.pack(
            2 if self.tags else 1,
            self.ref_ts_ms,
            *self.decayed,
            *self.totals,
            self.first_seen_ms,
            self.last_seen_ms,
        )
        if not self.tags:
            return counts
        return counts + _ITEM_TAGS.pack(*self.tags, *[0] * (MAX_ITEM_TAGS - len(self.tags)))

    @classmethod
    def from_bytes(cls, data: bytes) -> ItemState:
        fmt = data[0] if data else 0
        if fmt not in (1, 2) or len(data) != _ITEM_FORMAT.size + (fmt == 2) * _ITEM_TAGS.size:
            raise ValueError(f"unknown item state format {fmt} ({len(data)} bytes)")
        fields = _ITEM_FORMAT.unpack_from(data)
        n_decayed = len(EVENT_TYPES) * len(WINDOWS_SECONDS)
        decayed = list(fields[2 : 2 + n_decayed])
        totals = list(fields[2 + n_decayed : 2 + n_decayed + len(EVENT_TYPES)])
        tags = _ITEM_TAGS.unpack_from(data, _ITEM_FORMAT.size) if fmt == 2 else ()
        return cls(fields[1], decayed, totals, fields[-2], fields[-1], tuple(t for t in tags if t))
