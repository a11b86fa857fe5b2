"""Entity state for a whole batch at once: columnar, updated with numpy.

The per-entity classes in :mod:`models.features` define the state and the encoder inputs
(training uses them). This module computes the same states and inputs for a batch of
users or items in a fixed number of array operations, with no Python object per entity
or per event, and reads and writes the same bytes (user state format 3, item state
formats 1 and 2). ``tests/models/test_state_batch.py`` checks the two against each other.

- :func:`apply_user_events` merges a batch of events into the users' stored histories
  (time order, newest ``window`` kept) and returns the new state bytes and the
  :class:`UserHistories` the user tower reads.
- :func:`apply_item_events` updates the decayed counts of a batch of items and returns the
  new state bytes and the :class:`ItemCounts` the item tower reads.
- With no events, both decode stored states for re-encoding (the backfill).

Longer than the 400 lines modules keep to, for one reader: the user and item state formats
are read and written here side by side with the helpers they share, mirroring
:mod:`models.features`, which tests hold them equal to.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.features import (
    EVENT_TYPES,
    ITEM_FEATURES,
    MAX_ITEM_TAGS,
    USER_STATE_FORMAT,
    USER_STATE_HEADER,
    WINDOWS_SECONDS,
    ItemInput,
    ItemState,
    UserInput,
    UserState,
    tag_hashes,
)
from models.hashing import id_hash64

__all__ = [
    "EventColumns",
    "ItemCounts",
    "ParsedEvent",
    "UserHistories",
    "apply_item_events",
    "apply_user_events",
    "event_columns",
    "item_popularity",
]

_USER_HEADER = np.dtype([("format", "u1"), ("count", "<u4"), ("last_ts", "<u8"), ("entries", "<u2")])
_ENTRY_BYTES = 8 + 1 + 4 + 2 + 8  # timestamp, code, value, id length, id hash
assert _USER_HEADER.itemsize == USER_STATE_HEADER.size
_N_DECAYED = len(EVENT_TYPES) * len(WINDOWS_SECONDS)
_ITEM_STATE = np.dtype(
    [
        ("format", "u1"),
        ("ref_ts", "<u8"),
        ("decayed", "<f8", (_N_DECAYED,)),
        ("totals", "<u4", (len(EVENT_TYPES),)),
        ("first_seen", "<u8"),
        ("last_seen", "<u8"),
    ]
)
#: Item state format 2: format 1 and the tag hashes (written only for an item with tags).
_ITEM_STATE_TAGGED = np.dtype([*_ITEM_STATE.descr, ("tags", "<u8", (MAX_ITEM_TAGS,))])
_NO_TAGS = bytes(_ITEM_STATE_TAGGED.itemsize - _ITEM_STATE.itemsize)
_TAUS = np.array(WINDOWS_SECONDS, dtype=np.float64)
_EMPTY_ITEM = ItemState().to_bytes()
log = logging.getLogger("embstream.state")


@dataclass(frozen=True)
class EventColumns:
    """A batch of valid events as columns, in the order they are applied."""

    user_ids: list[str]
    item_ids: list[str]
    type_codes: np.ndarray  # uint8
    values: np.ndarray  # float32, NaN where the event has no value
    timestamps_ms: np.ndarray  # int64
    #: The tag hashes declared by the events that carry ``item_tags``, by event row.
    item_tags: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, rows: Sequence[int]) -> EventColumns:
        """The events at ``rows``, in that order."""
        index = np.asarray(rows, dtype=np.int64)
        tags = self.item_tags
        return EventColumns(
            [self.user_ids[row] for row in rows],
            [self.item_ids[row] for row in rows],
            self.type_codes[index],
            self.values[index],
            self.timestamps_ms[index],
            {new: tags[row] for new, row in enumerate(rows) if row in tags} if tags else {},
        )


class ParsedEvent(Protocol):
    """One valid event as the stream parses it (``stream.ingest.events.Interaction``)."""

    @property
    def user_id(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def type_code(self) -> int: ...
    @property
    def value(self) -> float | None: ...
    @property
    def ts_ms(self) -> int: ...
    @property
    def item_tags(self) -> tuple[str, ...] | None: ...


_NAN = float("nan")


def event_columns(events: Sequence[ParsedEvent]) -> EventColumns:
    """Parsed events as columns (NaN where an event has no value)."""
    count = len(events)
    tags = {
        row: tag_hashes(event.item_tags) for row, event in enumerate(events) if event.item_tags is not None
    }
    return EventColumns(
        [event.user_id for event in events],
        [event.item_id for event in events],
        np.fromiter((event.type_code for event in events), np.uint8, count),
        np.fromiter((_NAN if event.value is None else event.value for event in events), np.float32, count),
        np.fromiter((event.ts_ms for event in events), np.int64, count),
        tags,
    )


@dataclass(frozen=True)
class UserHistories(Sequence[UserInput]):
    """The user tower's input for a batch: each user's window, flattened oldest first.

    Entry arrays are grouped by user (``row``) and ordered by ``position`` within the user.
    Indexing gives the equivalent :class:`UserInput` (slow; for tests and encoder doubles).
    """

    user_ids: list[str]
    lengths: np.ndarray  # int64 [users]: entries per user
    row: np.ndarray  # int64 [entries]
    position: np.ndarray  # int64 [entries]
    item_hashes: np.ndarray  # uint64 [entries]
    type_codes: np.ndarray  # uint8 [entries]
    values: np.ndarray  # float32 [entries]
    timestamps_ms: np.ndarray  # int64 [entries]
    id_source: bytes  # item ids of the entries are id_source[id_start : id_start + id_length]
    id_start: np.ndarray  # int64 [entries]
    id_length: np.ndarray  # int64 [entries]

    def __len__(self) -> int:
        return len(self.user_ids)

    def __getitem__(self, index: int) -> UserInput:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        start = int(self.lengths[:index].sum())
        end = start + int(self.lengths[index])
        spans = zip(self.id_start[start:end].tolist(), self.id_length[start:end].tolist(), strict=True)
        return UserInput(
            self.user_ids[index],
            tuple(self.id_source[at : at + size].decode("utf-8") for at, size in spans),
            tuple(int(code) for code in self.type_codes[start:end]),
            tuple(float(value) for value in self.values[start:end]),
            tuple(int(ts) for ts in self.timestamps_ms[start:end]),
        )

    def __iter__(self) -> Iterator[UserInput]:
        return (self[index] for index in range(len(self)))


@dataclass(frozen=True)
class ItemCounts(Sequence[ItemInput]):
    """The item tower's input for a batch: raw counts and tag hashes, one row per item."""

    item_ids: list[str]
    counts: np.ndarray  # float64 [items, ITEM_FEATURES]
    tags: np.ndarray | None = None  # uint64 [items, MAX_ITEM_TAGS], 0 where no tag

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, index: int) -> ItemInput:  # type: ignore[override]
        tags = () if self.tags is None else tuple(int(t) for t in self.tags[index] if t)
        return ItemInput(self.item_ids[index], tuple(float(value) for value in self.counts[index]), tags)

    def __iter__(self) -> Iterator[ItemInput]:
        return (self[index] for index in range(len(self)))


def _gather(buffer: np.ndarray, offsets: np.ndarray, dtype: str) -> np.ndarray:
    """Little-endian values of ``dtype`` read at byte ``offsets`` of ``buffer``."""
    width = np.dtype(dtype).itemsize
    if width == 1:
        return buffer[offsets]
    picked = buffer[offsets[:, None] + np.arange(width)]
    return np.ascontiguousarray(picked).view(dtype).reshape(-1)


def _scatter(buffer: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` (one per offset, fixed width) into ``buffer`` at byte ``offsets``."""
    if not len(offsets):
        return
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(offsets), -1)
    buffer[offsets[:, None] + np.arange(raw.shape[1])] = raw


def _group_starts(counts: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum: where each group starts in a flat array."""
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def _rank_in_group(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each group of a flat array grouped by ``counts``."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(_group_starts(counts), counts)


def _readable_user_state(user_id: str, raw: bytes | None, window: int) -> bytes | None:
    """The stored state in format 3, or ``None`` (start afresh) if it is damaged.

    Formats 1 and 2 are rewritten once, through the reference class. A damaged state (cut
    short, lengths that do not add up) is logged and replaced rather than stopping the
    worker on every batch; a format this release does not know (a newer release wrote it)
    raises, since starting afresh would destroy state that is readable elsewhere.
    """
    if raw is None:
        return None
    if raw and raw[0] > USER_STATE_FORMAT:
        raise ValueError(f"unknown user state format {raw[0]} (written by a newer release?)")
    try:
        if raw[0] != USER_STATE_FORMAT:
            return UserState.from_bytes(raw, window=window).to_bytes()
        entries = USER_STATE_HEADER.unpack_from(raw, 0)[3]
        columns_end = _USER_HEADER.itemsize + _ENTRY_BYTES * entries
        lengths = struct.unpack_from(f"<{entries}H", raw, _USER_HEADER.itemsize + 13 * entries)
        if len(raw) == columns_end + sum(lengths):
            return raw
    except (ValueError, IndexError, struct.error):
        pass
    log.warning("user %r: stored state is damaged (%d bytes); starting it afresh", user_id, len(raw))
    return None


def _readable_item_state(item_id: str, raw: bytes | None) -> bytes:
    """The stored state (format 1 or 2) as it is; a damaged state is logged and started
    afresh, a newer release's format raises (as for users)."""
    if raw is None:
        return _EMPTY_ITEM
    if raw and raw[0] > 2:
        raise ValueError(f"unknown item state format {raw[0]} (written by a newer release?)")
    if (len(raw), raw[:1]) in ((_ITEM_STATE.itemsize, b"\x01"), (_ITEM_STATE_TAGGED.itemsize, b"\x02")):
        return raw
    log.warning("item %r: stored state is damaged (%d bytes); starting it afresh", item_id, len(raw))
    return _EMPTY_ITEM


def apply_user_events(
    user_ids: list[str],
    stored: Sequence[bytes | None],
    window: int,
    events: EventColumns | None = None,
    event_rows: np.ndarray | None = None,
) -> tuple[list[bytes], UserHistories]:
    """Merge ``events`` into the stored histories of ``user_ids``.

    ``event_rows[i]`` is the index in ``user_ids`` of event ``i``'s user. Same result as
    :meth:`UserState.add` for each event in order: entries in time order (ties keep
    arrival order), the newest ``window`` kept, lifetime count and last time updated.
    """
    raws = [_readable_user_state(u, raw, window) for u, raw in zip(user_ids, stored, strict=True)]
    present = np.array([raw is not None for raw in raws], dtype=bool)
    sizes = np.array([0 if raw is None else len(raw) for raw in raws], dtype=np.int64)
    n_events = 0 if events is None else len(events)
    new_ids = [] if events is None else [item_id.encode("utf-8") for item_id in events.item_ids]
    new_lengths = np.fromiter(map(len, new_ids), dtype=np.int64, count=n_events)
    joined = b"".join([*(raw for raw in raws if raw is not None), *new_ids])
    source = np.frombuffer(joined, dtype=np.uint8)
    starts = _group_starts(sizes)
    users = len(user_ids)

    # -- stored entries, read column by column ------------------------------------------
    held = np.zeros(users, dtype=np.int64)
    count = np.zeros(users, dtype=np.int64)
    last_ts = np.zeros(users, dtype=np.int64)
    at = starts[present]
    if len(at):
        formats = source[at]
        if np.any(formats != USER_STATE_FORMAT):
            raise ValueError(f"unknown user state format {int(formats[formats != USER_STATE_FORMAT][0])}")
        count[present] = _gather(source, at + 1, "<u4")
        last_ts[present] = _gather(source, at + 5, "<u8").astype(np.int64)
        held[present] = _gather(source, at + 13, "<u2")
    old_row = np.repeat(np.arange(users, dtype=np.int64), held)
    position = _rank_in_group(held)
    base = np.repeat(starts + _USER_HEADER.itemsize, held)
    width = np.repeat(held, held)
    old_ts = _gather(source, base + 8 * position, "<u8").astype(np.int64)
    old_codes = source[base + 8 * width + position]
    old_values = _gather(source, base + 9 * width + 4 * position, "<f4")
    old_lengths = _gather(source, base + 13 * width + 2 * position, "<u2").astype(np.int64)
    old_hashes = _gather(source, base + 15 * width + 8 * position, "<u8")
    within = np.cumsum(old_lengths) - old_lengths
    first_of_user = np.concatenate([[0], np.cumsum(old_lengths)])[_group_starts(held)]
    old_id_start = base + _ENTRY_BYTES * width + within - np.repeat(first_of_user, held)

    # -- new entries, appended after the stored ones (so ties keep arrival order) --------
    if events is not None and n_events:
        assert event_rows is not None
        hashes = {item_id: id_hash64("item", item_id) for item_id in dict.fromkeys(events.item_ids)}
        new_hashes = np.fromiter(
            (hashes[item_id] for item_id in events.item_ids), dtype=np.uint64, count=n_events
        )
        new_id_start = int(sizes.sum()) + _group_starts(new_lengths)
        np.add.at(count, event_rows, 1)
        np.maximum.at(last_ts, event_rows, events.timestamps_ms)
        row = np.concatenate([old_row, event_rows.astype(np.int64)])
        ts = np.concatenate([old_ts, events.timestamps_ms.astype(np.int64)])
        codes = np.concatenate([old_codes, events.type_codes.astype(np.uint8)])
        values = np.concatenate([old_values, events.values.astype(np.float32)])
        hashes_all = np.concatenate([old_hashes, new_hashes])
        id_start = np.concatenate([old_id_start, new_id_start])
        id_length = np.concatenate([old_lengths, new_lengths])
    else:
        row, ts, codes, values = old_row, old_ts, old_codes, old_values
        hashes_all, id_start, id_length = old_hashes, old_id_start, old_lengths

    # -- merge: by user, then time, then arrival; keep the newest `window` per user -----
    order = np.lexsort((np.arange(len(row)), ts, row))
    row, ts, codes, values = row[order], ts[order], codes[order], values[order]
    hashes_all, id_start, id_length = hashes_all[order], id_start[order], id_length[order]
    per_user = np.bincount(row, minlength=users).astype(np.int64)
    kept_per_user = np.minimum(per_user, window)
    rank = _rank_in_group(per_user)
    keep = rank >= (per_user - kept_per_user)[row]
    row, ts, codes, values = row[keep], ts[keep], codes[keep], values[keep]
    hashes_all, id_start, id_length = hashes_all[keep], id_start[keep], id_length[keep]
    position = _rank_in_group(kept_per_user)

    if events is None:  # nothing applied: the stored states stand (in the current format)
        states = [UserState(window=window).to_bytes() if raw is None else raw for raw in raws]
    else:
        states = _encode_user_states(
            kept_per_user, count, last_ts, row, position, ts, codes, values, hashes_all, id_length,
            id_start, source,
        )  # fmt: skip
    histories = UserHistories(
        user_ids, kept_per_user, row, position, hashes_all, codes, values, ts, joined,
        id_start, id_length,
    )  # fmt: skip
    return states, histories


def _encode_user_states(
    entries: np.ndarray,
    count: np.ndarray,
    last_ts: np.ndarray,
    row: np.ndarray,
    position: np.ndarray,
    ts: np.ndarray,
    codes: np.ndarray,
    values: np.ndarray,
    hashes: np.ndarray,
    id_length: np.ndarray,
    id_start: np.ndarray,
    source: np.ndarray,
) -> list[bytes]:
    """Format-3 state bytes for every user, assembled in one output buffer."""
    users = len(entries)
    id_total = np.bincount(row, weights=id_length, minlength=users).astype(np.int64)
    sizes = _USER_HEADER.itemsize + _ENTRY_BYTES * entries + id_total
    starts = _group_starts(sizes)
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    header = np.zeros(users, dtype=_USER_HEADER)
    header["format"] = USER_STATE_FORMAT
    header["count"] = count
    header["last_ts"] = last_ts
    header["entries"] = entries
    _scatter(out, starts, header)
    base = (starts + _USER_HEADER.itemsize)[row]
    width = entries[row]
    _scatter(out, base + 8 * position, ts.astype("<u8"))
    out[base + 8 * width + position] = codes
    _scatter(out, base + 9 * width + 4 * position, values.astype("<f4"))
    _scatter(out, base + 13 * width + 2 * position, id_length.astype("<u2"))
    _scatter(out, base + 15 * width + 8 * position, hashes.astype("<u8"))
    within = np.cumsum(id_length) - id_length
    first_of_user = np.concatenate([[0], np.cumsum(id_length)])[_group_starts(entries)]
    destination = base + _ENTRY_BYTES * width + within - np.repeat(first_of_user, entries)
    byte_rank = _rank_in_group(id_length)
    entry_of_byte = np.repeat(np.arange(len(id_length)), id_length)
    out[destination[entry_of_byte] + byte_rank] = source[id_start[entry_of_byte] + byte_rank]
    data = out.tobytes()
    return [data[start : start + size] for start, size in zip(starts.tolist(), sizes.tolist(), strict=True)]


def apply_item_events(
    item_ids: list[str],
    stored: Sequence[bytes | None],
    events: EventColumns | None = None,
    event_rows: np.ndarray | None = None,
) -> tuple[list[bytes], ItemCounts]:
    """Apply ``events`` to the stored states of ``item_ids``; same result as
    :meth:`ItemState.add_many` per item (up to the last bit of ``exp``)."""
    items = len(item_ids)
    readable = [_readable_item_state(i, state) for i, state in zip(item_ids, stored, strict=True)]
    short = _ITEM_STATE.itemsize
    with_tags = bool(events is not None and events.item_tags) or any(len(raw) != short for raw in readable)
    if with_tags:  # format 2 throughout (format 1 gains empty tags), cut back where none
        raw = b"".join(state if len(state) != short else state + _NO_TAGS for state in readable)
        state = np.frombuffer(raw, dtype=_ITEM_STATE_TAGGED, count=items).copy()
    else:  # the common case, no item has tags: format 1 as it is
        state = np.frombuffer(b"".join(readable), dtype=_ITEM_STATE, count=items).copy()
    if events is not None and len(events):
        assert event_rows is not None
        _update_items(state, events, event_rows.astype(np.int64))
        for row, hashes in events.item_tags.items():  # in event order: the latest wins
            state["tags"][event_rows[row]] = (*hashes, *[0] * (MAX_ITEM_TAGS - len(hashes)))
    if with_tags:
        tagged = state["tags"].any(axis=1)
        state["format"] = np.where(tagged, 2, 1)
        data, size = state.tobytes(), _ITEM_STATE_TAGGED.itemsize
        widths: list[int] = np.where(tagged, size, short).tolist()
        states = [data[index * size : index * size + width] for index, width in enumerate(widths)]
    else:
        data = state.tobytes()
        states = [data[index * short : (index + 1) * short] for index in range(items)]
    counts = np.concatenate([state["decayed"], state["totals"].astype(np.float64)], axis=1)
    assert counts.shape[1] == ITEM_FEATURES
    tags = state["tags"] if with_tags and state["tags"].any() else None
    return states, ItemCounts(item_ids, counts, tags)


def _update_items(state: np.ndarray, events: EventColumns, rows: np.ndarray) -> None:
    items = len(state)
    stamps = events.timestamps_ms.astype(np.int64)
    newest = np.zeros(items, dtype=np.int64)
    np.maximum.at(newest, rows, stamps)
    oldest = np.full(items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(oldest, rows, stamps)
    touched = np.zeros(items, dtype=bool)
    touched[rows] = True
    reference = state["ref_ts"].astype(np.int64)
    fresh = touched & (state["totals"].sum(axis=1) == 0) & (reference == 0)
    reference[fresh] = newest[fresh]
    state["first_seen"][fresh] = newest[fresh]
    state["last_seen"][fresh] = newest[fresh]
    later = touched & (newest > reference)
    elapsed = (newest[later] - reference[later]) / 1000.0
    factors = np.exp(-elapsed[:, None] / _TAUS)  # [items, windows]
    decayed = state["decayed"]
    decayed[later] *= np.tile(factors, len(EVENT_TYPES))
    reference[later] = newest[later]
    state["ref_ts"] = reference
    age = (reference[rows] - stamps) / 1000.0
    slots = events.type_codes.astype(np.int64)[:, None] * len(WINDOWS_SECONDS) + np.arange(len(_TAUS))
    np.add.at(decayed, (rows[:, None], slots), np.exp(-age[:, None] / _TAUS))
    np.add.at(state["totals"], (rows, events.type_codes.astype(np.int64)), 1)
    first = state["first_seen"].astype(np.int64)
    state["first_seen"][touched] = np.minimum(first[touched], oldest[touched])
    last = state["last_seen"].astype(np.int64)
    state["last_seen"][touched] = np.maximum(last[touched], newest[touched])


def item_popularity(states: Sequence[bytes], now_ms: int) -> np.ndarray:
    """Each item's interactions of the last day, all types, decayed to ``now_ms`` (the 24 h
    counts of its state, float64); 0 for a damaged or foreign state."""
    size = _ITEM_STATE.itemsize
    readable = ((size, b"\x01"), (_ITEM_STATE_TAGGED.itemsize, b"\x02"))
    whole = [raw[:size] if (len(raw), raw[:1]) in readable else _EMPTY_ITEM for raw in states]
    state = np.frombuffer(b"".join(whole), dtype=_ITEM_STATE, count=len(whole))
    day = WINDOWS_SECONDS.index(86_400)
    counts = state["decayed"][:, day :: len(WINDOWS_SECONDS)].sum(axis=1)
    age_s = np.maximum(0.0, (now_ms - state["ref_ts"].astype(np.float64)) / 1000.0)
    return counts * np.exp(-age_s / 86_400.0)
