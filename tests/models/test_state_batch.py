"""The batched, columnar state path against the per-entity reference classes."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import torch

from models.encoder import EncoderConfig, TwoTowerModel, item_batch, user_batch
from models.features import ItemState, UserInput, UserState, tag_hashes
from models.state_batch import EventColumns, apply_item_events, apply_user_events

BASE_TS = 1_800_000_000_000


def _random_events(rng: random.Random, users: list[str], items: list[str], count: int) -> list[tuple]:
    events = []
    for _ in range(count):
        code = rng.randrange(5)
        value = float(rng.choice([1, 2, 3.5, 4.5, 5])) if code == 4 and rng.random() < 0.8 else None
        # Coarse timestamps make ties (same user, same ms) common: arrival order must hold.
        ts = BASE_TS + rng.randrange(0, 50) * 60_000
        events.append((rng.choice(users), rng.choice(items), code, value, ts))
    return events


def _columns(events: list[tuple]) -> EventColumns:
    return EventColumns(
        [event[0] for event in events],
        [event[1] for event in events],
        np.array([event[2] for event in events], dtype=np.uint8),
        np.array([np.nan if event[3] is None else event[3] for event in events], dtype=np.float32),
        np.array([event[4] for event in events], dtype=np.int64),
    )


def _assert_same_input(actual: UserInput, expected: UserInput) -> None:
    assert (actual.user_id, actual.item_ids, actual.type_codes, actual.timestamps_ms) == (
        expected.user_id,
        expected.item_ids,
        expected.type_codes,
        expected.timestamps_ms,
    )
    np.testing.assert_array_equal(np.float32(actual.values), np.float32(expected.values))


def _rows(ids: list[str], keys: list[str]) -> np.ndarray:
    index = {entity_id: row for row, entity_id in enumerate(ids)}
    return np.array([index[key] for key in keys], dtype=np.int64)


@pytest.mark.parametrize("window", [1, 3, 50])
def test_user_histories_match_the_reference_over_several_batches(window: int) -> None:
    rng = random.Random(window)
    users = [f"user-{n}" for n in range(30)] + ["ünïcode-user"]
    items = [f"item-{n}" for n in range(40)] + ["ítem-é", "x" * 256]
    reference: dict[str, UserState] = {}
    stored: dict[str, bytes] = {}
    for _ in range(6):
        events = _random_events(rng, users, items, 120)
        for user, item, code, value, ts in events:
            reference.setdefault(user, UserState(window=window)).add(item, code, value, ts)
        touched = list(dict.fromkeys(event[0] for event in events))
        columns = _columns(events)
        states, histories = apply_user_events(
            touched, [stored.get(u) for u in touched], window, columns, _rows(touched, columns.user_ids)
        )
        stored.update(zip(touched, states, strict=True))
        for user, state, history in zip(touched, states, histories, strict=True):
            expected = reference[user]
            assert state == expected.to_bytes()
            assert UserState.from_bytes(state, window=window).to_bytes() == state
            _assert_same_input(history, expected.to_input(user))


def test_older_user_state_formats_are_read_and_rewritten() -> None:
    state = UserState(window=4)
    for n in range(6):
        state.add(f"i{n}", n % 5, 2.0 if n % 5 == 4 else None, BASE_TS + n)
    ids = state.item_ids
    format_2 = state.to_bytes()[: 15 + 23 * len(ids) - 8 * len(ids)]  # no hash column
    format_2 = bytes([2]) + format_2[1:] + b"".join(i.encode() for i in ids)
    states, histories = apply_user_events(["u"], [format_2], 4)
    assert states[0] == state.to_bytes()
    _assert_same_input(histories[0], state.to_input("u"))


def test_an_unknown_user_state_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        apply_user_events(["u"], [bytes([9]) + UserState().to_bytes()[1:]], 50)


def test_item_counts_match_the_reference_over_several_batches() -> None:
    rng = random.Random(7)
    items = [f"item-{n}" for n in range(25)]
    reference: dict[str, ItemState] = {}
    stored: dict[str, bytes] = {}
    for batch in range(5):
        events = _random_events(rng, ["u"], items, 200)
        events = [(u, i, c, v, ts + batch * 3_600_000) for u, i, c, v, ts in events]
        per_item: dict[str, list[tuple[int, int]]] = {}
        for _, item, code, _, ts in events:
            per_item.setdefault(item, []).append((code, ts))
        for item, applied in per_item.items():
            reference.setdefault(item, ItemState()).add_many(applied)
        touched = list(per_item)
        columns = _columns(events)
        states, counts = apply_item_events(
            touched, [stored.get(i) for i in touched], columns, _rows(touched, columns.item_ids)
        )
        stored.update(zip(touched, states, strict=True))
        for item, state, row in zip(touched, states, counts, strict=True):
            expected = reference[item]
            decoded = ItemState.from_bytes(state)
            assert (decoded.ref_ts_ms, decoded.totals) == (expected.ref_ts_ms, expected.totals)
            assert (decoded.first_seen_ms, decoded.last_seen_ms) == (
                expected.first_seen_ms,
                expected.last_seen_ms,
            )
            np.testing.assert_allclose(decoded.decayed, expected.decayed, rtol=1e-12, atol=0)
            np.testing.assert_allclose(row.counts, expected.to_input(item).counts, rtol=1e-12, atol=0)


def test_encoder_tensors_are_the_same_from_both_paths() -> None:
    config = EncoderConfig(dim=8, id_dim=4, buckets=64, hidden=8, history=5)
    rng = random.Random(3)
    users = [f"u{n}" for n in range(12)]
    items = [f"i{n}" for n in range(20)]
    events = _random_events(rng, users, items, 150)
    columns = _columns(events)
    touched = list(dict.fromkeys(columns.user_ids))
    _, histories = apply_user_events(
        touched, [None] * len(touched), 8, columns, _rows(touched, columns.user_ids)
    )
    fast, slow = user_batch(histories, config), user_batch(list(histories), config)
    for name in ("user_buckets", "item_buckets", "type_codes", "weights"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    item_ids = list(dict.fromkeys(columns.item_ids))
    _, counts = apply_item_events(
        item_ids, [None] * len(item_ids), columns, _rows(item_ids, columns.item_ids)
    )
    fast_items, slow_items = item_batch(counts, config), item_batch(list(counts), config)
    assert torch.equal(fast_items.item_buckets, slow_items.item_buckets)
    assert torch.equal(fast_items.features, slow_items.features)
    model = TwoTowerModel(config).eval()
    with torch.inference_mode():
        assert torch.equal(model.encode_users(fast), model.encode_users(slow))


def test_the_user_tower_pools_the_history_as_the_explicit_weighted_mean() -> None:
    config = EncoderConfig(dim=8, id_dim=4, buckets=64, hidden=8, history=5)
    model = TwoTowerModel(config).eval()
    with torch.no_grad():
        model.type_weight.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0]))
    rng = random.Random(5)
    events = _random_events(rng, ["a", "b", "c"], [f"i{n}" for n in range(9)], 20)
    columns = _columns(events)
    users = list(dict.fromkeys(columns.user_ids))
    _, histories = apply_user_events(users, [None] * len(users), 8, columns, _rows(users, columns.user_ids))
    batch = user_batch(histories, config)
    weights = torch.nn.functional.softplus(model.type_weight)[batch.type_codes] * batch.weights
    history = model.item_ids(batch.item_buckets).sum(dim=2)
    pooled = (weights.unsqueeze(-1) * history).sum(dim=1) / (weights.sum(dim=1, keepdim=True) + 1e-6)
    own = model.user_ids(batch.user_buckets).sum(dim=1)
    expected = torch.nn.functional.normalize(model.user_mlp(torch.cat([own, pooled], dim=1)), dim=1)
    with torch.inference_mode():
        assert torch.allclose(model.encode_users(batch), expected, atol=1e-6)


def _state_with(window: int, events: int, seed: int) -> UserState:
    rng = random.Random(seed)
    state = UserState(window=window)
    for n in range(events):
        state.add(f"it-{rng.randrange(9)}", rng.randrange(4), None, BASE_TS + rng.randrange(5) * 1000 + n)
    return state


def test_a_smaller_window_keeps_the_newest_entries_and_stored_states_decode_alone() -> None:
    wide = _state_with(window=8, events=8, seed=1)
    empty = UserState(window=8)  # stored, but with no entries
    users, stored = ["wide", "empty", "absent"], [wide.to_bytes(), empty.to_bytes(), None]
    states, histories = apply_user_events(users, stored, 3)  # backfill form: no events
    narrow = UserState.from_bytes(wide.to_bytes(), window=3)
    _assert_same_input(histories[0], narrow.to_input("wide"))
    assert len(histories[1].item_ids) == 0 and len(histories[2].item_ids) == 0
    assert states[0] == wide.to_bytes()  # nothing applied: stored bytes stand
    columns = _columns([("wide", "new-item", 1, None, BASE_TS + 99_000)])
    states, histories = apply_user_events(["wide"], [wide.to_bytes()], 3, columns, np.array([0]))
    narrow.add("new-item", 1, None, BASE_TS + 99_000)
    assert states[0] == narrow.to_bytes()


def test_format_1_user_state_is_read() -> None:
    state = _state_with(window=5, events=7, seed=2)
    header = struct.pack("<BIQ", 1, state.count, state.last_ts_ms)
    entries = b"".join(
        struct.pack("<QBfH", ts, code, value, len(item.encode())) + item.encode()
        for item, code, value, ts in zip(
            state.item_ids, state.type_codes, state.values, state.timestamps_ms, strict=True
        )
    )
    states, histories = apply_user_events(["u"], [header + entries], 5)
    assert states[0] == state.to_bytes()
    _assert_same_input(histories[0], state.to_input("u"))


def test_damaged_stored_states_start_afresh_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    good = _state_with(window=4, events=3, seed=3).to_bytes()
    damaged = [good[:-1], good + b"x", good[:10], b"", bytes([2]) + good[1:12]]
    users = [f"d{n}" for n in range(len(damaged))] + ["good"]
    columns = _columns([(user, "i", 0, None, BASE_TS + 5) for user in users])
    with caplog.at_level("WARNING", logger="embstream.state"):
        states, _ = apply_user_events(users, [*damaged, good], 4, columns, np.arange(len(users)))
    fresh = UserState(window=4)
    fresh.add("i", 0, None, BASE_TS + 5)
    assert states[: len(damaged)] == [fresh.to_bytes()] * len(damaged)
    expected = UserState.from_bytes(good, window=4)
    expected.add("i", 0, None, BASE_TS + 5)
    assert states[-1] == expected.to_bytes()
    assert sum("damaged" in record.message for record in caplog.records) == len(damaged)
    item_states, counts = apply_item_events(["a", "b"], [ItemState().to_bytes()[:-3], None])
    assert item_states == [ItemState().to_bytes()] * 2 and counts.counts.sum() == 0
    tagged = ItemState()
    tagged.set_tags(["Drama"])
    damaged_items = [b"", tagged.to_bytes()[:-1], b"\x02" + ItemState().to_bytes()[1:], tagged.to_bytes()]
    item_states, counts = apply_item_events(["c", "d", "e", "f"], damaged_items)
    assert item_states == [ItemState().to_bytes()] * 3 + [tagged.to_bytes()]
    assert counts.tags is not None and counts[3].tags == tagged.tags and counts[0].tags == ()


def test_a_window_of_one_and_states_from_a_newer_release() -> None:
    columns = _columns([("u", "i1", 0, None, BASE_TS), ("u", "i2", 0, None, BASE_TS + 1)])
    _, histories = apply_user_events(["u"], [None], 1, columns, np.array([0, 0]))
    assert histories[0].item_ids == ("i2",)
    with pytest.raises(ValueError, match="newer release"):
        apply_item_events(["a"], [bytes([7]) + ItemState().to_bytes()[1:]])


def test_item_tags_follow_the_latest_declaring_event_as_the_reference_does() -> None:
    rng = random.Random(5)
    items = [f"item-{n}" for n in range(12)]
    genres = ["Drama", "Comedy", "Crime", "Sci-Fi", "Film-Noir"]
    reference: dict[str, ItemState] = {}
    stored: dict[str, bytes] = {"item-0": ItemState().to_bytes()}  # format 1, before any tag
    for batch in range(4):
        events = _random_events(rng, ["u"], items, 60)
        tags: dict[int, list[str]] = {}
        for row in range(len(events)):
            if rng.random() < 0.3:
                tags[row] = rng.sample(genres, rng.randrange(0, 4))  # [] clears
        columns = _columns(events)
        columns = EventColumns(
            columns.user_ids, columns.item_ids, columns.type_codes, columns.values,
            columns.timestamps_ms, {row: tag_hashes(t) for row, t in tags.items()},
        )  # fmt: skip
        for row, (_, item, code, _, ts) in enumerate(events):
            state = reference.setdefault(item, ItemState())
            if row in tags:
                state.set_tags(tags[row])
            state.add_many([(code, ts + batch * 3_600_000)])
        touched = list(dict.fromkeys(columns.item_ids))
        shifted = EventColumns(
            columns.user_ids, columns.item_ids, columns.type_codes, columns.values,
            columns.timestamps_ms + batch * 3_600_000, columns.item_tags,
        )  # fmt: skip
        # a subset of the events, as the refresher takes them: the tags follow their rows
        taken = shifted.take(list(range(len(events))))
        states, counts = apply_item_events(
            touched, [stored.get(i) for i in touched], taken, _rows(touched, taken.item_ids)
        )
        stored.update(zip(touched, states, strict=True))
        for item, state, row in zip(touched, states, counts, strict=True):
            expected = reference[item]
            assert state[0] == (2 if expected.tags else 1)
            assert ItemState.from_bytes(state).tags == expected.tags == row.tags
            assert ItemState.from_bytes(state).totals == expected.totals
    config = EncoderConfig(dim=8, id_dim=4, buckets=64, hidden=8, history=5, item_tags=True)
    _, counts = apply_item_events(items, [stored.get(i) for i in items])
    fast, slow = item_batch(counts, config), item_batch(list(counts), config)
    assert fast.tag_buckets is not None and slow.tag_buckets is not None
    assert torch.equal(fast.tag_buckets, slow.tag_buckets)
    assert ((fast.tag_buckets > 0).sum(dim=1) == torch.tensor([len(reference[i].tags) for i in items])).all()
