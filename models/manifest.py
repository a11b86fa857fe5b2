"""A version's manifest (``manifest.json`` in the registry) and the rules of version numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.encoder import EncoderConfig
from models.errors import RegistryError

__all__ = ["MANIFEST_FORMAT", "MAX_VERSION", "Manifest", "version_number"]

MANIFEST_FORMAT = 1
#: Versions are positive integers that fit a signed 32-bit field.
MAX_VERSION = 2**31 - 1


def version_number(text: str) -> int:
    """A version written as text (a command-line argument, a setting): ASCII digits only,
    1 to :data:`MAX_VERSION`; ``ValueError`` otherwise (``int()`` alone takes "١" or " 1")."""
    if (
        not text
        or len(text) > 10
        or not text.isascii()
        or not text.isdigit()
        or not 1 <= int(text) <= MAX_VERSION
    ):
        raise ValueError(f"versions are integers from 1 to {MAX_VERSION} in ASCII digits, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class Manifest:
    version: int
    architecture: EncoderConfig
    weights_sha256: str
    created_at: str
    parent: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    aligner: dict[str, Any] | None = None
    #: The forward transform from the parent's space into this one's (``forward.pt``):
    #: ``{"method", "sha256", "source_dim", "target_dim"}``, or ``None``.
    forward: dict[str, Any] | None = None

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
            "aligner": self.aligner,
            "forward": self.forward,
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
                aligner=data.get("aligner"),
                forward=data.get("forward"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"malformed manifest: {exc}") from exc
