"""The encoder registry: one directory per version, weights plus a manifest.

Layout::

    <registry>/
      v1/
        manifest.json   {"version", "dim", "architecture", "inputs", "created_at",
                         "weights_sha256", "parent", "format", "training", "aligner",
                         "forward", "towers"} (:class:`models.manifest.Manifest`)
        weights.pt      a torch state dict, loaded with ``weights_only=True`` (trained)
        user_tower.pt2  the towers of an imported version, saved by ``torch.export``
        item_tower.pt2  (loaded as plain data: no pickled object is ever read)
        backward.pt     the backward aligner into the parent's space (if any), likewise
        forward.pt      the forward transform from the parent's space (if any), likewise
        report.json     the compatibility report (if any), report.png its picture

Weights, towers, aligners and forward transforms are loaded only after their sha256 matches
the manifest.

Longer than the 400 lines modules keep to, for one reader: each file of a version directory
is written and read here side by side, for trained and imported versions alike.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.aligners import BackwardAligner
from models.contract import InputContract
from models.encoder import TorchEncoder, TwoTowerModel
from models.errors import (
    ImportRefusedError,
    IncompatibleVersionsError,
    IntegrityError,
    RegistryError,
    UnloadableError,
    VersionMissingError,
)
from models.exported import ExportedEncoder, load_program
from models.manifest import MAX_VERSION, Manifest, version_number

__all__ = ["MAX_VERSION", "EncoderRegistry", "Manifest", "version_number"]

_VERSION_DIR = re.compile(r"^v([0-9]+)$")  # ASCII digits: \d would take "v١" as version 1


def _load_into(module: torch.nn.Module, version: int, name: str, data: bytes) -> None:
    """Load ``data`` into ``module``, accepting nothing but a state dict of plain tensors
    with the module's own names and shapes (anything else is an :class:`UnloadableError`:
    a pickled object, a truncated file, tensors of another architecture)."""
    try:
        module.load_state_dict(_tensors(version, name, data))
    except RuntimeError as error:  # missing or unexpected keys, shape mismatches
        first = str(error).strip().splitlines()[0]
        raise UnloadableError(f"version {version}: {name} does not fit its architecture ({first})") from None


def _tensors(version: int, name: str, data: bytes) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError:
        raise UnloadableError(
            f"version {version}: {name} is not a plain tensor file (it holds pickled objects, "
            "which are refused unread)"
        ) from None
    except Exception as error:  # a truncated or foreign file
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UnloadableError(
            f"version {version}: {name} is not a plain tensor file ({first[:200]})"
        ) from None
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UnloadableError(f"version {version}: {name} does not hold a state dict of tensors")
    return loaded


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EncoderRegistry:
    """Versions of the encoder, stored under one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        #: Aligner chains by (source, target), loaded once: a saved version never changes.
        self._chains: dict[tuple[int, int], list[BackwardAligner]] = {}

    def versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = _VERSION_DIR.match(child.name)
            if match and (child / "manifest.json").is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def path_of(self, version: int) -> Path:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RegistryError(f"versions are positive integers, got {version!r}")
        return self.root / f"v{version}"

    def _inside(self, path: Path) -> Path:
        """``path`` if it resolves (symlinks followed) to a place inside the registry."""
        resolved, root = path.resolve(), self.root.resolve()
        if not resolved.is_relative_to(root):
            raise IntegrityError(f"{path} leads outside the registry ({resolved}); refusing to read it")
        return path

    def manifest(self, version: int) -> Manifest:
        path = self._inside(self.path_of(version) / "manifest.json")
        if not path.is_file():
            raise VersionMissingError(
                f"version {version} is not in the registry at {self.root} (has {self.versions()})"
            )
        try:
            return Manifest.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path} is not valid JSON: {exc}") from exc

    def verify(self, version: int) -> Manifest:
        """Check that ``version`` can be served: its weights or towers (and aligner) match the
        manifest's sha256 and load as plain tensors into its architecture; raise
        :class:`IntegrityError` (or :class:`UnloadableError`) otherwise."""
        manifest = self.manifest(version)
        self.load(version)
        if manifest.aligner is not None:
            self.load_aligner(version)
        if manifest.forward is not None:
            self.load_forward(version)
        return manifest

    def _check_hash(self, version: int, name: str, expected: str) -> bytes:
        """The bytes of ``name`` in ``version``, read once and returned only if their sha256
        matches the manifest: what is loaded is exactly what was checked."""
        path = self._inside(self.path_of(version) / name)
        if not path.is_file():
            raise IntegrityError(f"version {version} has no {name} at {path}")
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise IntegrityError(
                f"version {version}: {name} sha256 {actual[:12]}… does not match the "
                f"manifest's {expected[:12]}…"
            )
        return data

    def load(self, version: int) -> TorchEncoder | ExportedEncoder:
        """Verify and load one version for inference."""
        manifest = self.manifest(version)
        if manifest.architecture is None:
            return self._load_exported(manifest)
        weights = self._check_hash(version, "weights.pt", str(manifest.weights_sha256))
        model = TwoTowerModel(manifest.architecture)
        _load_into(model, version, "weights.pt", weights)
        return TorchEncoder(model, version)

    def _load_exported(self, manifest: Manifest) -> ExportedEncoder:
        assert manifest.towers is not None
        programs = []
        for tower in ("user", "item"):
            entry = manifest.towers[tower]
            name = str(entry.get("file", f"{tower}_tower.pt2"))
            if Path(name).name != name:
                raise IntegrityError(f"version {manifest.version}: tower file {name!r} is not a plain name")
            data = self._check_hash(manifest.version, name, str(entry["sha256"]))
            try:
                programs.append(load_program(data, name))
            except ImportRefusedError as error:
                raise UnloadableError(f"version {manifest.version}: {error}") from None
        return ExportedEncoder(programs[0], programs[1], manifest.version, manifest.inputs, manifest.dim)

    def load_aligner(self, version: int) -> BackwardAligner | None:
        """The verified backward aligner of ``version`` into its parent, or ``None``."""
        manifest = self.manifest(version)
        if manifest.aligner is None:
            return None
        data = self._check_hash(version, "backward.pt", str(manifest.aligner["sha256"]))
        aligner = BackwardAligner(int(manifest.aligner["source_dim"]), int(manifest.aligner["target_dim"]))
        _load_into(aligner, version, "backward.pt", data)
        return aligner.eval()

    def load_forward(self, version: int) -> BackwardAligner | None:
        """The verified forward transform from ``version``'s parent into it, or ``None``.
        Apply it with :func:`models.aligners.forward_apply` (it normalises the rows)."""
        manifest = self.manifest(version)
        if manifest.forward is None:
            return None
        data = self._check_hash(version, "forward.pt", str(manifest.forward["sha256"]))
        transform = BackwardAligner(int(manifest.forward["source_dim"]), int(manifest.forward["target_dim"]))
        _load_into(transform, version, "forward.pt", data)
        return transform.eval()

    def lineage(self, version: int) -> list[int]:
        """``version``, its parent, grandparent, … back to the root."""
        chain = [version]
        seen = {version}
        parent = self.manifest(version).parent
        while parent is not None:
            if parent in seen:
                raise RegistryError(f"parent links of version {version} form a cycle")
            chain.append(parent)
            seen.add(parent)
            parent = self.manifest(parent).parent
        return chain

    def aligner_chain(self, source: int, target: int) -> list[BackwardAligner]:
        """Aligners that carry a vector of ``source`` back to ``target`` (applied in order).

        Raises :class:`IncompatibleVersionsError` when ``target`` is not an ancestor of
        ``source``, or a version on the way has no aligner.
        """
        lineage = self.lineage(source)
        if target not in lineage:
            raise IncompatibleVersionsError(
                f"version {target} is not an ancestor of version {source} (lineage {lineage})"
            )
        chain = []
        for version in lineage[: lineage.index(target)]:
            aligner = self.load_aligner(version)
            if aligner is None:
                raise IncompatibleVersionsError(
                    f"version {version} has no backward aligner, so version {source} cannot be "
                    f"carried back to {target}"
                )
            chain.append(aligner)
        return chain

    def carry(self, source: int, target: int) -> Callable[[np.ndarray], np.ndarray]:
        """A function carrying rows of ``source``'s space back into ``target``'s through the
        aligner chain (loaded and verified once per pair); raises as :meth:`aligner_chain`."""
        chain = self._chains.get((source, target))
        if chain is None:
            chain = self._chains[(source, target)] = self.aligner_chain(source, target)

        def apply(vectors: np.ndarray) -> np.ndarray:
            for aligner in chain:
                vectors = aligner.apply(vectors)
            return vectors

        return apply

    def report(self, version: int) -> dict[str, Any] | None:
        path = self._inside(self.path_of(version) / "report.json")
        if not path.is_file():
            return None
        return dict(json.loads(path.read_text()))

    def children(self, version: int) -> list[int]:
        return [v for v in self.versions() if self.manifest(v).parent == version]

    def delete(self, version: int, force: bool = False) -> None:
        """Remove ``version``; refused when another version descends from it, unless forced."""
        self.manifest(version)
        children = self.children(version)
        if children and not force:
            raise RegistryError(
                f"versions {children} descend from version {version}: deleting it would cut "
                "their aligner chains (use force to delete anyway)"
            )
        trash = self.root / f".deleting-v{version}"
        os.replace(self.path_of(version), trash)
        shutil.rmtree(trash)
        self._chains.clear()

    def save(
        self,
        model: TwoTowerModel,
        *,
        parent: int | None = None,
        training: dict[str, Any] | None = None,
        aligner: BackwardAligner | None = None,
        aligner_method: str | None = None,
        files: dict[str, bytes] | None = None,
        forward: BackwardAligner | None = None,
    ) -> Manifest:
        """Store ``model`` (and its aligner, forward transform, report files) as the next
        version, atomically."""
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        weights = buffer.getvalue()
        return self._store(
            model.config.dim,
            {"weights.pt": weights},
            {"architecture": model.config, "weights_sha256": hashlib.sha256(weights).hexdigest()},
            parent=parent,
            training=training,
            aligner=aligner,
            aligner_method=aligner_method,
            files=files,
            forward=forward,
        )

    def save_imported(
        self,
        user_tower: bytes,
        item_tower: bytes,
        *,
        dim: int,
        contract: InputContract,
        parent: int | None = None,
        training: dict[str, Any] | None = None,
        aligner: BackwardAligner | None = None,
        aligner_method: str | None = None,
        files: dict[str, bytes] | None = None,
        forward: BackwardAligner | None = None,
    ) -> Manifest:
        """Store two exported towers (the bytes of ``torch.export.save`` files, already
        checked by :func:`models.exported.check_towers`) as the next version, atomically."""
        towers = {
            "dim": dim,
            **{
                tower: {"file": f"{tower}_tower.pt2", "sha256": hashlib.sha256(data).hexdigest()}
                for tower, data in (("user", user_tower), ("item", item_tower))
            },
        }
        return self._store(
            dim,
            {"user_tower.pt2": user_tower, "item_tower.pt2": item_tower},
            {"architecture": None, "weights_sha256": None, "towers": towers, "contract": contract},
            parent=parent,
            training=training,
            aligner=aligner,
            aligner_method=aligner_method,
            files=files,
            forward=forward,
        )

    def _store(
        self,
        dim: int,
        payload: dict[str, bytes],
        described: dict[str, Any],
        *,
        parent: int | None,
        training: dict[str, Any] | None,
        aligner: BackwardAligner | None,
        aligner_method: str | None,
        files: dict[str, bytes] | None,
        forward: BackwardAligner | None,
    ) -> Manifest:
        """Write ``payload`` (the version's model files), its aligner, forward transform and
        extra ``files`` into a staging directory, then rename it into place."""
        if (aligner is not None or forward is not None) and parent is None:
            raise RegistryError("an aligner or a forward transform needs a parent version")
        if parent is not None:
            parent_dim = self.manifest(parent).dim
            if aligner is not None and (aligner.source_dim, aligner.target_dim) != (dim, parent_dim):
                raise RegistryError(
                    f"aligner maps {aligner.source_dim}->{aligner.target_dim}, expected {dim}->{parent_dim}"
                )
            if forward is not None and (forward.source_dim, forward.target_dim) != (parent_dim, dim):
                raise RegistryError(
                    f"forward transform maps {forward.source_dim}->{forward.target_dim}, expected "
                    f"{parent_dim}->{dim}"
                )
        for name in files or {}:
            if Path(name).name != name or name in ("", ".", "..") or name in payload:
                raise RegistryError(f"extra registry files are plain names, not paths, and new: {name!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        version = (self.latest() or 0) + 1
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        for name, content in payload.items():
            (staging / name).write_bytes(content)
        aligner_entry = None
        if aligner is not None:
            torch.save(aligner.state_dict(), staging / "backward.pt")
            aligner_entry = {
                "method": aligner_method,
                "sha256": _sha256(staging / "backward.pt"),
                "source_dim": aligner.source_dim,
                "target_dim": aligner.target_dim,
            }
        forward_entry = None
        if forward is not None:
            torch.save(forward.state_dict(), staging / "forward.pt")
            forward_entry = {
                "method": "least-squares",
                "sha256": _sha256(staging / "forward.pt"),
                "source_dim": forward.source_dim,
                "target_dim": forward.target_dim,
            }
        for name, content in (files or {}).items():
            (staging / name).write_bytes(content)
        manifest = Manifest(
            version=version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            parent=parent,
            training=training or {},
            aligner=aligner_entry,
            forward=forward_entry,
            **described,
        )
        (staging / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        try:
            os.replace(staging, self.path_of(version))
        except OSError as error:  # another process saved this version number first
            shutil.rmtree(staging, ignore_errors=True)
            if self.path_of(version).exists():
                raise RegistryError(
                    f"version {version} was created by another process while this one was being saved"
                ) from error
            raise
        return manifest
