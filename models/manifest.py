"""A version's manifest (``manifest.json`` in the registry) and the rules of version numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.contract import InputContract
from models.encoder import EncoderConfig
from models.errors import RegistryError

__all__ = ["EXPORTED", "MANIFEST_FORMAT", "MAX_VERSION", "Manifest", "version_number"]

MANIFEST_FORMAT = 1
#: Versions are positive integers that fit a signed 32-bit field.
MAX_VERSION = 2**31 - 1
#: The ``architecture.kind`` of an imported version (towers saved by ``torch.export``).
EXPORTED = "torch.export"


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
    """What a version is. A trained version has an ``architecture`` (the built-in two-tower
    model's config) and ``weights.pt``; an imported one has no architecture but ``towers``:
    ``{"dim", "user": {"file", "sha256"}, "item": {"file", "sha256"}}``, two programs saved
    by ``torch.export``. Both record their input contract (``inputs``)."""

    version: int
    architecture: EncoderConfig | None
    weights_sha256: str | None
    created_at: str
    parent: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    aligner: dict[str, Any] | None = None
    #: The forward transform from the parent's space into this one's (``forward.pt``):
    #: ``{"method", "sha256", "source_dim", "target_dim"}``, or ``None``.
    forward: dict[str, Any] | None = None
    towers: dict[str, Any] | None = None
    #: The input contract of an imported version (a trained one's follows its architecture).
    contract: InputContract | None = None

    def __post_init__(self) -> None:
        if (self.architecture is None) == (self.towers is None):
            raise RegistryError("a manifest has either an architecture or exported towers")

    @property
    def dim(self) -> int:
        if self.architecture is not None:
            return self.architecture.dim
        assert self.towers is not None
        return int(self.towers["dim"])

    @property
    def inputs(self) -> InputContract:
        """The tensors this version's towers read (:mod:`models.contract`)."""
        if self.architecture is not None:
            return self.architecture.inputs
        return self.contract or InputContract()

    @property
    def kind(self) -> str:
        return "builtin" if self.architecture is not None else EXPORTED

    def to_json(self) -> dict[str, Any]:
        architecture: dict[str, Any] = (
            self.architecture.to_dict()
            if self.architecture is not None
            else {"kind": EXPORTED, "dim": self.dim}
        )
        data: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "dim": self.dim,
            "architecture": architecture,
            "inputs": self.inputs.to_json(),
            "created_at": self.created_at,
            "weights_sha256": self.weights_sha256,
            "parent": self.parent,
            "training": self.training,
            "aligner": self.aligner,
            "forward": self.forward,
        }
        if self.towers is not None:
            data["towers"] = self.towers
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        try:
            exported = data["architecture"].get("kind") == EXPORTED
            towers = data.get("towers") if exported else None
            if exported and not (
                isinstance(towers, dict)
                and all(isinstance(towers.get(t), dict) and "sha256" in towers[t] for t in ("user", "item"))
            ):
                raise RegistryError(
                    "malformed manifest: an imported version lists its towers and their sha256"
                )
            return cls(
                version=int(data["version"]),
                architecture=None if exported else EncoderConfig.from_dict(data["architecture"]),
                weights_sha256=None if data.get("weights_sha256") is None else str(data["weights_sha256"]),
                created_at=str(data["created_at"]),
                parent=None if data.get("parent") is None else int(data["parent"]),
                training=dict(data.get("training", {})),
                aligner=data.get("aligner"),
                forward=data.get("forward"),
                towers=towers,
                contract=InputContract.from_json(data["inputs"]) if exported else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RegistryError(f"malformed manifest: {exc}") from exc
