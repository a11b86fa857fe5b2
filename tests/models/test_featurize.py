"""The featurisation API gives the tensors the stream gives: the same log, split into any
batches and applied by the stream's own parse and refresh path, ends in the same user and
item tensors as ``featurize`` on the whole log."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.contract import FEATURE_NAMES, ITEM_TENSORS, USER_TENSORS, InputContract
from models.encoder import ItemBatch, UserBatch, item_batch, user_batch
from models.errors import TrainingError
from models.features import EVENT_TYPES, ITEM_FEATURES, MAX_ITEM_TAGS, ItemInput, UserInput
from models.featurize import featurize
from models.state_batch import event_columns
from stream.ingest.events import Interaction, parse_event
from stream.ingest.refresher import refresh_entities

IN_CI = bool(os.environ.get("CI"))
START = 1_790_000_000_000
NOW = 1_800_000_000_000

events_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "user_id": st.sampled_from([f"u{n}" for n in range(6)] + ["ü-ser", "用户"]),
            "item_id": st.sampled_from([f"i{n}" for n in range(10)]),
            "type": st.sampled_from(EVENT_TYPES),
            "ts": st.integers(START, START + 30 * 86_400_000),
        },
        optional={
            "value": st.floats(0.0, 5.0, width=32) | st.integers(0, 5),
            "item_tags": st.lists(st.sampled_from(["Drama", "Crime", "Sci-Fi", "Film-Noir"]), max_size=3),
        },
    ),
    min_size=1,
    max_size=60,
)


class _Recorder:
    """An encoder double that keeps the tensors the stream hands it, per entity."""

    def __init__(self, contract: InputContract) -> None:
        self.version, self.dim, self.inputs = 1, 1, contract
        self.users: dict[str, tuple[torch.Tensor, ...]] = {}
        self.items: dict[str, tuple[torch.Tensor, ...]] = {}

    def encode_users(self, inputs: Sequence[UserInput]) -> np.ndarray:
        tensors = user_batch(inputs, self.inputs).tensors()
        for row, user in enumerate(inputs):
            self.users[user.user_id] = tuple(t[row] for t in tensors)
        return np.zeros((len(inputs), 1), dtype=np.float32)

    def encode_items(self, inputs: Sequence[ItemInput]) -> np.ndarray:
        tensors = item_batch(inputs, self.inputs).tensors()
        for row, item in enumerate(inputs):
            self.items[item.item_id] = tuple(t[row] for t in tensors)
        return np.zeros((len(inputs), 1), dtype=np.float32)


def _stream(lines: list[bytes], cuts: list[int], contract: InputContract, window: int) -> _Recorder:
    """Apply ``lines`` as the worker does: parsed, cut into batches, each batch refreshing
    the entities it touches from their stored states."""
    recorder = _Recorder(contract)
    stored: dict[str, dict[str, bytes | None]] = {"user": {}, "item": {}}
    bounds = [0, *sorted(set(cuts)), len(lines)]
    for start, end in itertools.pairwise(bounds):
        parsed = [parse_event(line, NOW, NOW, 86_400_000) for line in lines[start:end]]
        assert all(isinstance(event, Interaction) for event in parsed)
        columns = event_columns(parsed)  # type: ignore[arg-type]
        for kind in ("user", "item"):
            keys = columns.user_ids if kind == "user" else columns.item_ids
            states = {key: stored[kind].get(key) for key in keys}
            refreshed = refresh_entities(kind, columns, states, [recorder], window)
            stored[kind].update(zip(refreshed.ids, refreshed.states, strict=True))
    return recorder


def _assert_rows_equal(expected: tuple[torch.Tensor, ...], batch: UserBatch | ItemBatch, row: int) -> None:
    for want, got in zip(expected, batch.tensors(), strict=True):
        if want.dtype == torch.float32:
            # Item counts decay once per batch: a split log may round the last bit apart.
            torch.testing.assert_close(got[row], want, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(got[row], want)


@settings(max_examples=80, deadline=None, derandomize=IN_CI)
@given(
    events=events_strategy,
    cuts=st.lists(st.integers(0, 60), max_size=4),
    history=st.integers(1, 12),
    window=st.integers(1, 12),
    tags=st.sampled_from([0, 2, MAX_ITEM_TAGS]),
)
def test_featurize_gives_the_tensors_the_stream_gives_for_any_batching(
    events: list[dict[str, Any]], cuts: list[int], history: int, window: int, tags: int
) -> None:
    contract = InputContract(history=history, buckets=97, recency_tau_seconds=3_600.0, item_tags=tags)
    # The stream applies events in arrival order; featurize sorts by time. Arrival in time
    # order (ties in log order) is what a log replay gives.
    events = sorted(events, key=lambda event: event["ts"])
    lines = [json.dumps(event).encode() for event in events]
    recorded = _stream(lines, [cut for cut in cuts if cut < len(lines)], contract, window)
    features = featurize(lines, contract=contract, user_window=window)
    assert set(features.user_ids) == set(recorded.users)
    assert set(features.item_ids) == set(recorded.items)
    for row, user_id in enumerate(features.user_ids):
        _assert_rows_equal(recorded.users[user_id], features.users, row)
    for row, item_id in enumerate(features.item_ids):
        _assert_rows_equal(recorded.items[item_id], features.items, row)


def test_featurize_at_a_time_counts_only_the_events_before_it_and_keeps_the_chosen_entities() -> None:
    events = [
        {"user_id": "a", "item_id": "x", "type": "view", "ts": START},
        {"user_id": "a", "item_id": "y", "type": "rating", "value": 5, "ts": START + 1_000},
        {"user_id": "b", "item_id": "y", "type": "click", "ts": START + 2_000},
    ]
    features = featurize(events, at_ms=START + 1_000, users=["b", "a"], items=["y"])
    assert features.user_ids == ["b", "a"] and features.item_ids == ["y"]
    weights = features.users.weights
    assert weights[0].sum() == 0  # b's only event is after the cut: an empty history
    # a: two entries, the newest weighs 1.1 (rating 5 → 5/5 + 0.1; age 0), padding 0
    assert weights[1, 1].item() == pytest.approx(1.1)
    assert weights[1, 0].item() == pytest.approx(float(np.exp(-1.0 / 86_400.0)))
    assert (weights[1, 2:] == 0).all()
    assert features.items.features.shape == (1, ITEM_FEATURES)
    total = FEATURE_NAMES.index("rating_total")
    assert features.items.features[0, total].item() == pytest.approx(float(np.log1p(1.0)))
    assert features.user_rows(["a"]).tolist() == [1]


def test_the_contract_lists_each_tower_input_as_built() -> None:
    features = featurize([{"user_id": "a", "item_id": "x", "type": "view", "ts": START}])
    contract = InputContract().to_json()
    assert [spec["name"] for spec in contract["user_tower"]] == [spec.name for spec in USER_TENSORS]
    for spec, tensor in zip(USER_TENSORS, features.users.tensors(), strict=True):
        assert str(tensor.dtype) == f"torch.{spec.dtype}" and tensor.dim() == len(spec.shape)
    for spec, tensor in zip(ITEM_TENSORS, features.items.tensors(), strict=True):
        assert str(tensor.dtype) == f"torch.{spec.dtype}" and tensor.dim() == len(spec.shape)
    assert features.users.item_buckets.shape == (1, 50, 2)
    assert contract["feature_names"] == list(FEATURE_NAMES) and len(FEATURE_NAMES) == ITEM_FEATURES
    assert contract["item_tags"] == 0 and len(contract["item_tower"]) == len(ITEM_TENSORS)


def test_a_contract_with_item_tags_declares_the_tag_tensor_and_reads_back() -> None:
    contract = InputContract(history=5, buckets=97, item_tags=3)
    written = contract.to_json()
    assert written["item_tower"][-1] == {"name": "tag_buckets", "dtype": "int64", "shape": ["B", "T"]}
    assert InputContract.from_json(written) == contract
    older = {key: value for key, value in written.items() if key != "item_tags"}
    assert InputContract.from_json(older).item_tags == 0  # manifests from before tags
    features = featurize(
        [{"user_id": "a", "item_id": "x", "type": "view", "ts": START, "item_tags": ["Drama", "Crime"]}],
        contract=contract,
    )
    buckets, _, tag_buckets = features.items.tensors()
    assert buckets.shape == (1, 2) and tag_buckets.shape == (1, 3)
    assert (tag_buckets[0, :2] > 0).all() and tag_buckets[0, 2] == 0
    with pytest.raises(ValueError, match="item_tags is 0 to 8"):
        InputContract(item_tags=MAX_ITEM_TAGS + 1)


def test_featurize_names_the_first_unusable_event() -> None:
    with pytest.raises(TrainingError, match="event 2: unknown type"):
        featurize(
            [
                {"user_id": "a", "item_id": "x", "type": "view", "ts": START},
                {"user_id": "a", "item_id": "x", "type": "like", "ts": START},
            ]
        )
