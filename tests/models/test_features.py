from __future__ import annotations

import math

import pytest

from models.features import ITEM_FEATURES, MAX_ITEM_TAGS, TYPE_CODES, ItemState, UserState, tag_hashes

HOUR_MS = 3_600_000


def test_user_window_keeps_the_most_recent_in_time_order() -> None:
    state = UserState(window=3)
    for n, ts in enumerate([10, 30, 20, 40, 5]):
        state.add(f"i{n}", TYPE_CODES["view"], None, ts)
    assert state.timestamps_ms == [20, 30, 40]
    assert state.item_ids == ["i2", "i1", "i3"]
    assert state.count == 5 and state.last_ts_ms == 40


def test_user_state_bytes_round_trip() -> None:
    state = UserState(window=5)
    state.add("é-item", TYPE_CODES["rating"], 4.0, 100)
    state.add("other", TYPE_CODES["view"], None, 200)
    back = UserState.from_bytes(state.to_bytes(), window=5)
    assert back.item_ids == state.item_ids and back.count == 2 and back.last_ts_ms == 200
    assert back.values[0] == 4.0 and math.isnan(back.values[1])
    assert UserState.from_bytes(state.to_bytes(), window=1).item_ids == ["other"]


def test_item_decayed_counts_do_not_depend_on_arrival_order() -> None:
    stamps = [0, 5 * HOUR_MS, 2 * HOUR_MS, 30 * HOUR_MS, HOUR_MS]
    forward, shuffled = ItemState(), ItemState()
    for ts in sorted(stamps):
        forward.add(TYPE_CODES["click"], ts + 1_700_000_000_000)
    for ts in stamps:
        shuffled.add(TYPE_CODES["click"], ts + 1_700_000_000_000)
    assert forward.decayed == pytest.approx(shuffled.decayed)
    assert forward.totals == shuffled.totals == [0, 5, 0, 0, 0]


def test_item_windows_decay_at_their_time_constants() -> None:
    state = ItemState()
    base = 1_700_000_000_000
    state.add(TYPE_CODES["purchase"], base)
    state.add(TYPE_CODES["view"], base + HOUR_MS)
    purchase = TYPE_CODES["purchase"] * 3
    assert state.decayed[purchase] == pytest.approx(math.exp(-1))  # 1 h window, 1 h later
    assert state.decayed[purchase + 1] == pytest.approx(math.exp(-1 / 24))
    features = state.to_input("x").features
    assert len(features) == ITEM_FEATURES
    back = ItemState.from_bytes(state.to_bytes())
    assert back == state


def test_user_state_written_in_format_1_still_reads() -> None:
    import struct

    old = struct.pack("<BIQ", 1, 7, 200) + struct.pack("<QBfH", 100, 2, float("nan"), 1) + b"a"
    old += struct.pack("<QBfH", 200, 4, 3.5, 2) + "é".encode()
    state = UserState.from_bytes(old, window=5)
    assert state.item_ids == ["a", "é"] and state.type_codes == [2, 4] and state.count == 7
    assert state.values[1] == 3.5 and state.timestamps_ms == [100, 200]
    assert UserState.from_bytes(state.to_bytes(), window=5).item_ids == ["a", "é"]


def test_adding_many_item_events_at_once_equals_adding_them_one_by_one() -> None:
    import random

    rng = random.Random(4)
    base = 1_700_000_000_000
    one_by_one, batched = ItemState(), ItemState()
    for _ in range(5):
        chunk = [
            (rng.randrange(5), base + rng.randrange(0, 40 * HOUR_MS)) for _ in range(rng.randrange(1, 9))
        ]
        for code, ts in chunk:
            one_by_one.add(code, ts)
        batched.add_many(chunk)
        assert batched.decayed == pytest.approx(one_by_one.decayed, rel=1e-9)
        assert (batched.totals, batched.ref_ts_ms) == (one_by_one.totals, one_by_one.ref_ts_ms)
        assert (batched.first_seen_ms, batched.last_seen_ms) == (
            one_by_one.first_seen_ms,
            one_by_one.last_seen_ms,
        )


def test_item_tags_are_stored_in_format_2_and_an_item_without_them_stays_in_format_1() -> None:
    plain = ItemState()
    plain.add(TYPE_CODES["view"], 1_700_000_000_000)
    before = plain.to_bytes()
    assert before[0] == 1 and len(before) == 165
    tagged = ItemState.from_bytes(before)
    tagged.set_tags(["Drama", "Crime", "Drama"])  # duplicates dropped, order kept
    raw = tagged.to_bytes()
    assert raw[0] == 2 and len(raw) == len(before) + 8 * MAX_ITEM_TAGS and raw[1:165] == before[1:]
    back = ItemState.from_bytes(raw)
    assert back == tagged and back.tags == tag_hashes(["Drama", "Crime"]) and len(back.tags) == 2
    assert back.to_input("x").tags == back.tags
    back.set_tags([])
    assert back.to_bytes() == before  # no tags: format 1 again, byte for byte
    assert len(tag_hashes([f"t{n}" for n in range(20)])) == MAX_ITEM_TAGS
    for damaged in (raw[:-1], b"\x03" + raw[1:], before + b"\x00"):
        with pytest.raises(ValueError, match="item state format"):
            ItemState.from_bytes(damaged)
