"""Importing a team's own encoder as a version (``embstream models import``).

Two towers exported with ``torch.export`` are loaded as plain data, checked on batches built
from the input contract (:func:`models.exported.check_towers`), given a backward aligner
into the parent's space (supplied, or fitted on paired embeddings of the same entities) and
a forward transform from it, evaluated with the same compatibility report as a trained
version, and stored. Anything refused raises :class:`ImportRefusedError` before the
registry is touched.

The paired entities are the users and items of an interaction log or, without one, those of
a live store: their states are there, and each user's stored window is also a slice of the
log (enough for the report's next-item recall).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.aligners import BackwardAligner, fit_forward, fit_least_squares, fit_procrustes
from models.contract import InputContract
from models.encoder import Encoder
from models.errors import ImportRefusedError
from models.exported import ExportedEncoder, check_towers, load_program
from models.features import EVENT_TYPES, ItemInput, UserInput
from models.featurize import featurize
from models.manifest import Manifest
from models.registry import EncoderRegistry
from models.state_batch import apply_item_events, apply_user_events
from models.training import build_examples
from models.versioning import DEFAULT_GATE_PCT, VersionRequest, build_report, report_files

__all__ = ["IMPORT_METHODS", "EntityStates", "ImportRequest", "import_version", "states_log"]

IMPORT_METHODS = ("procrustes", "posthoc-linear", "none")


@dataclass(frozen=True)
class EntityStates:
    """Users' and items' stored states (``(id, state bytes)``, as the store keeps them)."""

    users: Sequence[tuple[str, bytes]]
    items: Sequence[tuple[str, bytes]]
    user_window: int = 50


@dataclass(frozen=True)
class ImportRequest:
    """What ``embstream models import`` asks for."""

    user_tower: Path
    item_tower: Path
    parent: int | None = None  # None: the registry's latest version (none in an empty registry)
    method: str = "procrustes"
    aligner: Path | None = None  # a given backward aligner (a plain tensor file)
    contract: InputContract = field(default_factory=InputContract)
    forward: bool = True
    gate_pct: float = DEFAULT_GATE_PCT
    recall_k: int = 10
    seed: int = 0


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ImportRefusedError(f"no {what} at {path}")
    return path.read_bytes()


def _given_aligner(path: Path, dim: int, parent_dim: int) -> BackwardAligner:
    """The aligner in ``path``: a state dict with ``linear.weight`` or one matrix tensor, of
    shape ``[parent dim, new dim]``, read as plain tensors only."""
    try:
        loaded = torch.load(io.BytesIO(_read(path, "aligner file")), weights_only=True)
    except pickle.UnpicklingError:
        raise ImportRefusedError(f"{path} holds pickled objects; save the aligner's state_dict()") from None
    except Exception as error:
        raise ImportRefusedError(f"{path} is not a tensor file ({str(error)[:200]})") from None
    if isinstance(loaded, dict) and set(loaded) == {"linear.weight"}:
        loaded = loaded["linear.weight"]
    if not isinstance(loaded, torch.Tensor):
        raise ImportRefusedError(f"{path} holds neither a matrix nor an aligner state dict (linear.weight)")
    if tuple(loaded.shape) != (parent_dim, dim):
        raise ImportRefusedError(
            f"the aligner in {path} is {list(loaded.shape)}; carrying {dim} dimensions back to the "
            f"parent's {parent_dim} needs [{parent_dim}, {dim}]"
        )
    if not torch.isfinite(loaded).all():
        raise ImportRefusedError(f"the aligner in {path} holds NaN or infinite values")
    return BackwardAligner.from_matrix(loaded.detach().to(torch.float32).numpy())


#: Users whose stored windows make the report's log (evenly spread over those given).
LOG_USERS = 10_000


def states_log(states: EntityStates, users: int = LOG_USERS) -> list[dict[str, Any]]:
    """The events kept in the stored windows of up to ``users`` users, as an interaction log
    sorted by time."""
    picked = states.users[:: max(1, -(-len(states.users) // users))]
    ids = [user_id for user_id, _ in picked]
    _, histories = apply_user_events(ids, [raw for _, raw in picked], states.user_window)
    events = []
    for user in histories:
        for item_id, code, value, ts in zip(
            user.item_ids, user.type_codes, user.values, user.timestamps_ms, strict=True
        ):
            event: dict[str, Any] = {
                "user_id": user.user_id,
                "item_id": item_id,
                "type": EVENT_TYPES[code],
                "ts": ts,
            }
            if not np.isnan(value):
                event["value"] = float(value)
            events.append(event)
    events.sort(key=lambda event: event["ts"])
    return events


def _entities(
    events: Sequence[dict[str, Any]] | None, states: EntityStates | None, contract: InputContract
) -> tuple[Sequence[UserInput], Sequence[ItemInput]]:
    """The entities whose paired embeddings fit the aligner and forward transform."""
    if events is not None:
        features = featurize(events, contract=contract)
        return features.user_inputs, features.item_inputs
    assert states is not None
    ids = [user_id for user_id, _ in states.users]
    _, users = apply_user_events(ids, [raw for _, raw in states.users], states.user_window)
    _, items = apply_item_events([i for i, _ in states.items], [raw for _, raw in states.items])
    return users, items


def _pairs(
    new: Encoder, parent: Encoder, users: Sequence[UserInput], items: Sequence[ItemInput]
) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([new.encode_users(users), new.encode_items(items)]),
        np.concatenate([parent.encode_users(users), parent.encode_items(items)]),
    )


def import_version(
    registry: EncoderRegistry,
    request: ImportRequest,
    events: Sequence[dict[str, Any]] | None = None,
    states: EntityStates | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Manifest, dict[str, Any]]:
    """Check, align, evaluate and store an imported version; returns its manifest and report.

    ``events`` (an interaction log sorted by time) or ``states`` (a store's entities) give
    the entities to fit on and the log to evaluate with; one of them is needed.
    """
    say = progress or (lambda _: None)
    if request.method not in IMPORT_METHODS:
        raise ImportRefusedError(
            f"unknown method {request.method!r}; choose from {', '.join(IMPORT_METHODS)}"
        )
    user_bytes = _read(request.user_tower, "user tower")
    item_bytes = _read(request.item_tower, "item tower")
    user_program = load_program(user_bytes, request.user_tower.name)
    item_program = load_program(item_bytes, request.item_tower.name)
    dim = check_towers(user_program, item_program, request.contract)
    say(f"towers checked: {dim} dimensions")
    version = (registry.latest() or 0) + 1
    encoder = ExportedEncoder(user_program, item_program, version, request.contract, dim)
    parent = request.parent if request.parent is not None else registry.latest()
    if parent is not None:
        registry.verify(parent)
    log = list(events) if events is not None else states_log(states) if states is not None else None
    if log is None or not log:
        raise ImportRefusedError(
            "no entities to evaluate the towers on: give an interaction log (--events), or a store "
            "with users in it"
        )
    method = request.method if parent is not None else "none"
    aligner, forward = None, None
    if parent is not None:
        parent_encoder = registry.load(parent)
        users, items = _entities(events, states, request.contract)
        say(f"embedding {len(users):,} users and {len(items):,} items with the towers and version {parent}")
        new_vectors, parent_vectors = _pairs(encoder, parent_encoder, users, items)
        if request.aligner is not None:
            aligner, method = _given_aligner(request.aligner, dim, parent_encoder.dim), "given"
        elif method == "procrustes":
            aligner = fit_procrustes(new_vectors, parent_vectors)
        elif method == "posthoc-linear":
            aligner = fit_least_squares(new_vectors, parent_vectors)
        if request.forward:
            forward = fit_forward(parent_vectors, new_vectors)
    elif request.aligner is not None:
        raise ImportRefusedError("an aligner needs a parent version, and the registry is empty")
    examples = build_examples(log, request.contract.history)
    if examples.split >= len(examples.users):
        raise ImportRefusedError(f"the log's {len(log):,} events leave no validation period to evaluate on")
    settings = VersionRequest(
        method=method, parent=parent, gate_pct=request.gate_pct, recall_k=request.recall_k, seed=request.seed
    )
    say("computing the compatibility report")
    report = build_report(
        registry, version, parent, method, encoder, aligner, encoder, examples, settings, forward
    )
    files = report_files(report)
    info = {
        "method": method,
        "imported": True,
        "events": len(log),
        "entities": "interaction log" if events is not None else "store",
    }
    manifest = registry.save_imported(
        user_bytes,
        item_bytes,
        dim=dim,
        contract=request.contract,
        parent=parent,
        training=info,
        aligner=aligner,
        aligner_method=method,
        files=files,
        forward=forward,
    )
    return manifest, report
