"""The encoder registry: one directory per version, weights plus a manifest.

Layout::

    <registry>/
      v1/
        manifest.json   {"version", "dim", "architecture", "created_at", "weights_sha256",
                         "parent", "format", "training"}
        weights.pt      a torch state dict, loaded with ``weights_only=True``

Weights are loaded only after their sha256 matches the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from models.encoder import EncoderConfig, TorchEncoder, TwoTowerModel
from models.errors import IntegrityError, RegistryError, VersionMissingError

__all__ = ["EncoderRegistry", "Manifest"]

MANIFEST_FORMAT = 1
_VERSION_DIR = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class Manifest:
    version: int
    architecture: EncoderConfig
    weights_sha256: str
    created_at: str
    parent: int | None = None
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.architecture.dim

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "dim": self.dim,
            "architecture": self.architecture.to_dict(),
            "created_at": self.created_at,
            "weights_sha256": self.weights_sha256,
            "parent": self.parent,
            "training": self.training,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        try:
            return cls(
                version=int(data["version"]),
                architecture=EncoderConfig.from_dict(data["architecture"]),
                weights_sha256=str(data["weights_sha256"]),
                created_at=str(data["created_at"]),
                parent=None if data.get("parent") is None else int(data["parent"]),
                training=dict(data.get("training", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"malformed manifest: {exc}") from exc


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
        if not isinstance(version, int) or version < 1:
            raise RegistryError(f"versions are positive integers, got {version!r}")
        return self.root / f"v{version}"

    def manifest(self, version: int) -> Manifest:
        path = self.path_of(version) / "manifest.json"
        if not path.is_file():
            raise VersionMissingError(
                f"version {version} is not in the registry at {self.root} (has {self.versions()})"
            )
        try:
            return Manifest.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path} is not valid JSON: {exc}") from exc

    def verify(self, version: int) -> Manifest:
        """Re-hash the weights of ``version``; raise :class:`IntegrityError` on mismatch."""
        manifest = self.manifest(version)
        weights = self.path_of(version) / "weights.pt"
        if not weights.is_file():
            raise IntegrityError(f"version {version} has no weights file at {weights}")
        actual = _sha256(weights)
        if actual != manifest.weights_sha256:
            raise IntegrityError(
                f"version {version}: weights sha256 {actual[:12]}… does not match the "
                f"manifest's {manifest.weights_sha256[:12]}…"
            )
        return manifest

    def load(self, version: int) -> TorchEncoder:
        """Verify and load one version for inference."""
        manifest = self.verify(version)
        model = TwoTowerModel(manifest.architecture)
        state = torch.load(self.path_of(version) / "weights.pt", weights_only=True)
        model.load_state_dict(state)
        return TorchEncoder(model, version)

    def save(
        self,
        model: TwoTowerModel,
        *,
        parent: int | None = None,
        training: dict[str, Any] | None = None,
    ) -> Manifest:
        """Store ``model`` as the next version; the directory appears atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = (self.latest() or 0) + 1
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        weights = staging / "weights.pt"
        torch.save(model.state_dict(), weights)
        manifest = Manifest(
            version=version,
            architecture=model.config,
            weights_sha256=_sha256(weights),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            parent=parent,
            training=training or {},
        )
        (staging / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        os.replace(staging, self.path_of(version))
        return manifest
