"""The stream's featurisation, for training outside embstream.

:func:`featurize` turns an interaction log into exactly the tensors the towers receive in
the stream, for every user and item (or a chosen set) at a given time. It runs the stream's
own code: events become columns (:func:`models.state_batch.event_columns`), the batch state
update builds each entity's state (:func:`~models.state_batch.apply_user_events`,
:func:`~models.state_batch.apply_item_events`), and :func:`models.encoder.user_batch` /
:func:`~models.encoder.item_batch` build the tensors, so what a team trains on is what its
towers will be given live::

    from models import InputContract, featurize

    features = featurize("events.jsonl", at_ms=cutoff, contract=InputContract(history=50))
    user_vectors = user_tower(*features.users.tensors())  # [users, D]
    item_vectors = item_tower(*features.items.tensors())  # [items, D]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.contract import InputContract
from models.encoder import ItemBatch, UserBatch, item_batch, user_batch
from models.errors import TrainingError
from models.features import TYPE_CODES, ItemInput, UserInput, tag_hashes
from models.interaction_log import normalise_event, read_interaction_log
from models.state_batch import (
    EventColumns,
    apply_item_events,
    apply_user_events,
)
from models.training import build_examples

__all__ = ["Features", "featurize", "featurize_pairs", "log_columns"]


@dataclass(frozen=True)
class Features:
    """The towers' inputs for a set of users and items at one time.

    Row ``i`` of :attr:`users` is ``user_ids[i]``, row ``j`` of :attr:`items` is
    ``item_ids[j]``. :attr:`user_inputs` / :attr:`item_inputs` are the same entities as the
    stream's batch objects (what :class:`models.encoder.Encoder` methods take, and what
    :class:`models.compat_loss.BackwardCompatibilityLoss` reads to embed them with older
    versions).
    """

    contract: InputContract
    at_ms: int | None
    user_ids: list[str]
    item_ids: list[str]
    users: UserBatch
    items: ItemBatch
    user_inputs: Sequence[UserInput]
    item_inputs: Sequence[ItemInput]
    user_states: list[bytes]
    item_states: list[bytes]

    def user_rows(self, ids: Iterable[str]) -> torch.Tensor:
        """Row numbers of ``ids`` in :attr:`users` (``KeyError`` for an id not featurised)."""
        index = {user_id: row for row, user_id in enumerate(self.user_ids)}
        return torch.tensor([index[user_id] for user_id in ids], dtype=torch.int64)

    def item_rows(self, ids: Iterable[str]) -> torch.Tensor:
        index = {item_id: row for row, item_id in enumerate(self.item_ids)}
        return torch.tensor([index[item_id] for item_id in ids], dtype=torch.int64)


def _events(log: str | Path | Iterable[Mapping[str, Any] | str | bytes]) -> list[dict[str, Any]]:
    """Valid events of ``log`` sorted by time (stable: ties keep log order)."""
    if isinstance(log, str | Path):
        return read_interaction_log(log).events
    events = []
    for number, row in enumerate(log, 1):
        parsed = json.loads(row) if isinstance(row, str | bytes) else row
        if not isinstance(parsed, Mapping):
            raise TrainingError(f"event {number} is not a JSON object")
        event = normalise_event(dict(parsed))
        if isinstance(event, str):
            raise TrainingError(f"event {number}: {event}")
        events.append(event)
    events.sort(key=lambda event: event["ts"])
    return events


def log_columns(events: Sequence[Mapping[str, Any]]) -> EventColumns:
    """Normalised event dicts (``read_interaction_log``'s) as the stream's columns."""
    values = (event.get("value") for event in events)
    return EventColumns(
        [str(event["user_id"]) for event in events],
        [str(event["item_id"]) for event in events],
        np.fromiter((TYPE_CODES[str(event["type"])] for event in events), np.uint8, len(events)),
        np.fromiter((np.nan if v is None else v for v in values), np.float32, len(events)),
        np.fromiter((int(event["ts"]) for event in events), np.int64, len(events)),
        {row: tag_hashes(event["item_tags"]) for row, event in enumerate(events) if "item_tags" in event},
    )


def _rows(keys: list[str], wanted: Sequence[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The entities (``wanted``, else every key in first-seen order), each event's row among
    them, and which events belong to one of them."""
    ids = list(dict.fromkeys(keys if wanted is None else wanted))
    index = {key: row for row, key in enumerate(ids)}
    rows = np.fromiter((index.get(key, -1) for key in keys), np.int64, len(keys))
    return ids, rows, rows >= 0


def featurize(
    log: str | Path | Iterable[Mapping[str, Any] | str | bytes],
    *,
    at_ms: int | None = None,
    users: Sequence[str] | None = None,
    items: Sequence[str] | None = None,
    contract: InputContract | None = None,
    user_window: int = 50,
) -> Features:
    """The towers' inputs built from ``log`` as the stream builds them.

    ``log`` is a JSON lines or CSV file (as ``embstream train`` reads it), or an iterable of
    event dicts or JSON lines in the event contract. Only events at or before ``at_ms``
    count (default: all). ``users`` / ``items`` choose the entities (default: every one
    in the log up to ``at_ms``; an entity with no events gets the empty state, as an id new
    to the stream does). ``user_window`` is the stream's ``EMBSTREAM_USER_WINDOW``: how many
    recent interactions it stores per user, of which the contract's ``history`` are read.
    """
    contract = contract or InputContract()
    events = _events(log)
    if at_ms is not None:
        events = [event for event in events if int(event["ts"]) <= at_ms]
    columns = log_columns(events)
    user_ids, user_rows, user_mask = _rows(columns.user_ids, users)
    item_ids, item_rows, item_mask = _rows(columns.item_ids, items)
    user_events = columns.take(np.flatnonzero(user_mask).tolist())
    item_events = columns.take(np.flatnonzero(item_mask).tolist())
    user_states, histories = apply_user_events(
        user_ids, [None] * len(user_ids), user_window, user_events, user_rows[user_mask]
    )
    item_states, counts = apply_item_events(
        item_ids, [None] * len(item_ids), item_events, item_rows[item_mask]
    )
    return Features(
        contract,
        at_ms,
        user_ids,
        item_ids,
        user_batch(histories, contract),
        item_batch(counts, contract),
        histories,
        counts,
        user_states,
        item_states,
    )


def featurize_pairs(
    log: str | Path | Iterable[Mapping[str, Any] | str | bytes],
    *,
    contract: InputContract | None = None,
    user_window: int = 50,
) -> Features:
    """Training pairs: for every event of ``log`` after a user's first, row ``k`` of
    :attr:`Features.users` is the user's input just before event ``k`` and row ``k`` of
    :attr:`Features.items` the item's (the positive), in time order. The states are those
    the stream would hold at that moment (the per-entity classes of
    :mod:`models.features`, which the tests hold equal to the stream's batch state), so the
    ``user_ids`` / ``item_ids`` repeat and ``user_states`` / ``item_states`` are empty."""
    contract = contract or InputContract()
    examples = build_examples(_events(log), user_window, validation_fraction=0.0)
    users, items = examples.users, examples.items
    return Features(
        contract,
        None,
        [user.user_id for user in users],
        [item.item_id for item in items],
        user_batch(users, contract),
        item_batch(items, contract),
        users,
        items,
        [],
        [],
    )
