"""Encoder versions made of a team's own towers, exported with ``torch.export``.

A tower is a program saved with :func:`torch.export.save`: an ATen graph plus its weights,
with no Python code of the team's repository and no pickled objects (the archive is loaded
with every tensor read as plain data). :func:`load_program` reads one; :func:`check_towers`
calls both on batches built from the input contract (:mod:`models.contract`) and refuses
anything that could not be served; :class:`ExportedEncoder` serves them.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from models.contract import USER_TENSORS, InputContract, TensorSpec
from models.encoder import ItemBatch, TwoTowerModel, UserBatch, item_batch, user_batch
from models.errors import ImportRefusedError
from models.features import ITEM_FEATURES, ItemInput, UserInput, tag_hashes

__all__ = [
    "ExportedEncoder",
    "builtin_towers",
    "check_towers",
    "contract_batches",
    "export_tower",
    "export_towers",
    "load_program",
]

_DTYPES = {"int64": torch.int64, "float32": torch.float32}
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


@contextmanager
def _weights_only() -> Iterator[None]:
    """Every ``torch.load`` inside reads plain tensors only (``torch.export.load`` would
    otherwise fall back to unpickling arbitrary objects)."""
    before = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = before


def load_program(data: bytes, name: str) -> torch.export.ExportedProgram:
    """The exported program in ``data`` (the bytes of a ``torch.export.save`` file);
    :class:`ImportRefusedError` naming ``name`` for anything else."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.namelist()
    except zipfile.BadZipFile:
        raise ImportRefusedError(f"{name} is not a torch.export program (not a .pt2 archive)") from None
    if not any(member.endswith("archive_format") for member in members):
        pickled = any(member.endswith("data.pkl") for member in members)
        what = "a pickled torch.save file" if pickled else "not a torch.export archive"
        raise ImportRefusedError(
            f"{name} is {what}; save the tower with torch.export.save(torch.export.export(...))"
        )
    try:
        with _weights_only():
            return torch.export.load(io.BytesIO(data))
    except Exception as error:  # a damaged archive, or one holding pickled objects
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ImportRefusedError(f"{name} does not load as plain data ({first[:200]})") from None


def _placeholders(program: torch.export.ExportedProgram) -> list[Any]:
    """The fake tensors of the program's user inputs, in call order."""
    names = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    values = {node.name: node.meta.get("val") for node in program.graph.nodes if node.op == "placeholder"}
    return [values.get(name) for name in names]


def _check_signature(
    program: torch.export.ExportedProgram, tower: str, specs: Sequence[TensorSpec], contract_tags: int = 0
) -> int | None:
    """Refuse a program whose inputs are not the contract's; the history length it was
    exported with (user tower), else ``None``."""
    found = _placeholders(program)
    expected = ", ".join(f"{s.name} {s.dtype} [{', '.join(map(str, s.shape))}]" for s in specs)
    if len(found) != len(specs):
        raise ImportRefusedError(
            f"the {tower} tower takes {len(found)} tensors; the contract gives {len(specs)}: {expected}"
        )
    history = None
    for spec, value in zip(specs, found, strict=True):
        if not isinstance(value, torch.Tensor):
            raise ImportRefusedError(f"the {tower} tower's input {spec.name} is not a tensor")
        if value.dtype != _DTYPES[spec.dtype] or value.dim() != len(spec.shape):
            raise ImportRefusedError(
                f"the {tower} tower's input {spec.name} is {str(value.dtype).removeprefix('torch.')} "
                f"with {value.dim()} dimensions; the contract gives {expected}"
            )
        if isinstance(value.shape[0], int):
            raise ImportRefusedError(
                f"the {tower} tower only takes batches of {value.shape[0]}; export it with a dynamic "
                "batch dimension (dynamic_shapes with torch.export.Dim on dimension 0 of every input)"
            )
        for axis, size in zip(spec.shape[1:], value.shape[1:], strict=True):
            if not isinstance(size, int):
                raise ImportRefusedError(
                    f"the {tower} tower's input {spec.name} has a dynamic dimension besides the batch"
                )
            if axis == "L":
                history = history if history is not None else size
                if size != history:
                    raise ImportRefusedError(f"the {tower} tower's inputs disagree on the history length")
            elif axis == "T" and size != contract_tags:
                raise ImportRefusedError(
                    f"the {tower} tower reads {size} tag slots; the input contract says "
                    f"{contract_tags} (pass --item-tags {size})"
                )
            elif axis == "F" and size != ITEM_FEATURES:
                raise ImportRefusedError(
                    f"the {tower} tower reads {size} item features; the contract gives {ITEM_FEATURES}"
                )
            elif isinstance(axis, int) and size != axis:
                raise ImportRefusedError(
                    f"the {tower} tower's input {spec.name} has {size} where the contract has {axis}"
                )
    return history


def contract_batches(contract: InputContract, size: int, seed: int = 0) -> tuple[UserBatch, ItemBatch]:
    """A batch of ``size`` varied users and items built by the contract's featurisation
    (histories from empty to full, every event type, ratings with and without values)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    start = 1_700_000_000_000
    for row in range(size):
        length = int(rng.integers(0, contract.history + 1)) if row else 0
        codes = tuple(int(c) for c in rng.integers(0, 5, length))
        values = tuple(
            float(rng.uniform(0, 5)) if c == 4 and rng.random() < 0.8 else float("nan") for c in codes
        )
        stamps = tuple(sorted(int(start + t) for t in rng.integers(0, 30 * 86_400_000, length)))
        item_ids = tuple(f"contract-item-{int(i)}" for i in rng.integers(0, 10_000, length))
        users.append(UserInput(f"contract-user-{row}", item_ids, codes, values, stamps))
        counts = tuple(float(c) for c in rng.exponential(3.0, ITEM_FEATURES) * (row % 3 != 0))
        tags = tag_hashes([f"contract-tag-{int(t)}" for t in rng.integers(0, 50, int(rng.integers(0, 4)))])
        items.append(ItemInput(f"contract-item-{row}", counts, tags))
    return user_batch(users, contract), item_batch(items, contract)


def _call(module: torch.nn.Module, tensors: tuple[torch.Tensor, ...], tower: str) -> torch.Tensor:
    try:
        with torch.inference_mode():
            output = module(*tensors)
    except Exception as error:  # a guard of the program failed, or the graph raised
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ImportRefusedError(
            f"the {tower} tower fails on a batch of {len(tensors[0])} contract inputs: {first[:300]}"
        ) from None
    if not isinstance(output, torch.Tensor):
        raise ImportRefusedError(f"the {tower} tower returns {type(output).__name__}, not one tensor")
    return output


def _check_outputs(module: torch.nn.Module, tensors: tuple[torch.Tensor, ...], tower: str) -> int:
    """Refuse a tower whose outputs are not float32 ``[B, D]``, finite, deterministic and
    independent of the batch a row is in; returns ``D``."""
    size = len(tensors[0])
    output = _call(module, tensors, tower)
    if output.dtype != torch.float32 or output.dim() != 2 or output.shape[0] != size or output.shape[1] < 1:
        raise ImportRefusedError(
            f"the {tower} tower returns {str(output.dtype).removeprefix('torch.')} "
            f"{list(output.shape)} for a batch of {size}; it must return float32 [{size}, D]"
        )
    if not torch.isfinite(output).all():
        bad = int((~torch.isfinite(output)).any(dim=1).sum())
        raise ImportRefusedError(f"the {tower} tower returns NaN or infinite values ({bad} of {size} rows)")
    if output.shape[1] > 16_383:
        raise ImportRefusedError(
            f"the {tower} tower returns {output.shape[1]} dimensions; the store keeps at most 16383"
        )
    again = _call(module, tensors, tower)
    if not torch.equal(output, again):
        raise ImportRefusedError(
            f"the {tower} tower is not deterministic: two calls on the same batch differ"
        )
    single = torch.cat(
        [_call(module, tuple(t[row : row + 1] for t in tensors), tower) for row in range(min(size, 4))]
    )
    if single.shape != output[: len(single)].shape or not torch.allclose(
        single, output[: len(single)], atol=1e-5
    ):
        raise ImportRefusedError(
            f"the {tower} tower gives a row a different vector alone than in a batch of {size}"
        )
    return int(output.shape[1])


def check_towers(
    user_program: torch.export.ExportedProgram,
    item_program: torch.export.ExportedProgram,
    contract: InputContract,
) -> int:
    """Call both towers on contract batches (sizes 1 and several) and refuse anything that
    could not be served; returns the shared dimension."""
    history = _check_signature(user_program, "user", USER_TENSORS)
    _check_signature(item_program, "item", contract.item_tensors, contract.item_tags)
    if history is not None and history != contract.history:
        raise ImportRefusedError(
            f"the user tower was exported for a history of {history} entries; the input contract "
            f"says {contract.history} (pass --history {history})"
        )
    users, items = contract_batches(contract, 16)
    user_dim = _check_outputs(user_program.module(), users.tensors(), "user")
    item_dim = _check_outputs(item_program.module(), items.tensors(), "item")
    if user_dim != item_dim:
        raise ImportRefusedError(
            f"the user tower returns {user_dim} dimensions and the item tower {item_dim}"
        )
    return user_dim


class ExportedEncoder:
    """An imported version: its two exported towers, in inference mode."""

    def __init__(
        self,
        user_program: torch.export.ExportedProgram,
        item_program: torch.export.ExportedProgram,
        version: int,
        inputs: InputContract,
        dim: int,
    ) -> None:
        self.user_tower = user_program.module()
        self.item_tower = item_program.module()
        self.version = version
        self.inputs = inputs
        self.dim = dim

    def encode_user_tensors(self, batch: UserBatch) -> torch.Tensor:
        with torch.inference_mode():
            return self.user_tower(*batch.tensors())  # type: ignore[no-any-return]

    def encode_item_tensors(self, batch: ItemBatch) -> torch.Tensor:
        with torch.inference_mode():
            return self.item_tower(*batch.tensors())  # type: ignore[no-any-return]

    def encode_users(self, inputs: Sequence[UserInput]) -> np.ndarray:
        if not inputs:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.encode_user_tensors(user_batch(inputs, self.inputs)).numpy()

    def encode_items(self, inputs: Sequence[ItemInput]) -> np.ndarray:
        if not inputs:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.encode_item_tensors(item_batch(inputs, self.inputs)).numpy()


class _UserTower(torch.nn.Module):
    def __init__(self, model: TwoTowerModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        user_buckets: torch.Tensor,
        item_buckets: torch.Tensor,
        type_codes: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        return self.model.encode_users(UserBatch(user_buckets, item_buckets, type_codes, weights))


class _ItemTower(torch.nn.Module):
    def __init__(self, model: TwoTowerModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_buckets: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.model.encode_items(ItemBatch(item_buckets, features))


class _TaggedItemTower(_ItemTower):
    """The item tower of a model that reads tags: the contract's third item tensor."""

    def forward(  # type: ignore[override]
        self, item_buckets: torch.Tensor, features: torch.Tensor, tag_buckets: torch.Tensor
    ) -> torch.Tensor:
        return self.model.encode_items(ItemBatch(item_buckets, features, tag_buckets))


def builtin_towers(model: TwoTowerModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The built-in model's towers as modules over the contract's tensors (to export it, or
    to compare an imported version with a trained one)."""
    item = _TaggedItemTower(model) if model.config.item_tags else _ItemTower(model)
    return _UserTower(model).eval(), item.eval()


def export_tower(module: torch.nn.Module, tensors: tuple[torch.Tensor, ...], dynamic: bool = True) -> bytes:
    """``module`` exported on two rows of ``tensors`` (its contract inputs), with a dynamic
    batch dimension unless ``dynamic`` is false: the bytes of its ``torch.export.save`` file."""
    example = tuple(t[:2] for t in tensors)
    batch = torch.export.Dim("batch", min=1)
    shapes = [{0: batch}] * len(example) if dynamic else None
    program = torch.export.export(module.eval(), example, dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def export_towers(
    user: torch.nn.Module, item: torch.nn.Module, contract: InputContract
) -> tuple[bytes, bytes]:
    """Both towers exported with a dynamic batch on contract tensors: the bytes of their
    ``torch.export.save`` files."""
    users, items = contract_batches(contract, 3)
    return export_tower(user, users.tensors()), export_tower(item, items.tensors())
