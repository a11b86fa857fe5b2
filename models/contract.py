"""The encoder input contract: the tensors each tower receives, public and versioned.

Every version's towers read the same kinds of tensors, built by :mod:`models.encoder` from
the entity state the stream keeps (:mod:`models.features`). The contract is what an encoder
trained outside embstream must accept to be imported as a version
(``embstream models import``), and it is recorded in each manifest under ``inputs``.

User tower, in this order (``B`` is the batch, dynamic; ``L`` is :attr:`InputContract.history`):

- ``user_buckets`` int64 ``[B, 2]``: the two hash buckets of the user id.
- ``item_buckets`` int64 ``[B, L, 2]``: the two buckets of each history item, oldest first,
  right-padded with bucket 0.
- ``type_codes`` int64 ``[B, L]``: each history event's type, :data:`EVENT_TYPES` order
  (padding 0).
- ``weights`` float32 ``[B, L]``: recency x rating factor per history entry, 0 for padding
  (so the weight is the mask).

Item tower:

- ``item_buckets`` int64 ``[B, 2]``: the two hash buckets of the item id.
- ``features`` float32 ``[B, F]``: ``log1p`` of the item's counts, :data:`FEATURE_NAMES`
  order.
- ``tag_buckets`` int64 ``[B, T]``, only for towers that declare ``item_tags`` (``T``, at
  most :data:`~models.features.MAX_ITEM_TAGS`): the item's tags (``item_tags`` of its
  events), each hashed (person ``"tag"``) to ``1 + hash % (buckets - 1)``, right-padded with
  0 (no tag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.errors import RegistryError
from models.features import EVENT_TYPES, ITEM_FEATURES, MAX_ITEM_TAGS, WINDOWS_SECONDS

__all__ = [
    "CONTRACT_FORMAT",
    "FEATURE_NAMES",
    "ITEM_TAG_TENSOR",
    "ITEM_TENSORS",
    "USER_TENSORS",
    "InputContract",
    "TensorSpec",
]

CONTRACT_FORMAT = 1


def _window_name(seconds: int) -> str:
    return f"{seconds // 86_400}d" if seconds % 86_400 == 0 else f"{seconds // 3_600}h"


#: The item feature columns, in order: decayed counts per event type and window, then the
#: lifetime totals per type.
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{kind}_decayed_{_window_name(window)}" for kind in EVENT_TYPES for window in WINDOWS_SECONDS),
    *(f"{kind}_total" for kind in EVENT_TYPES),
)
assert len(FEATURE_NAMES) == ITEM_FEATURES


@dataclass(frozen=True)
class TensorSpec:
    """One input tensor of a tower: its name, dtype and shape (``"B"`` is the dynamic batch,
    ``"L"`` the history length, ``"F"`` the item feature count)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


USER_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("user_buckets", "int64", ("B", 2)),
    TensorSpec("item_buckets", "int64", ("B", "L", 2)),
    TensorSpec("type_codes", "int64", ("B", "L")),
    TensorSpec("weights", "float32", ("B", "L")),
)
ITEM_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec("item_buckets", "int64", ("B", 2)),
    TensorSpec("features", "float32", ("B", "F")),
)
#: The item tower's third input, for towers that read the item's tags.
ITEM_TAG_TENSOR = TensorSpec("tag_buckets", "int64", ("B", "T"))


@dataclass(frozen=True)
class InputContract:
    """The parameters of the featurisation: history length, hash buckets, recency decay.

    ``history`` entries of a user's stored window are used (the newest; the stream stores
    ``EMBSTREAM_USER_WINDOW`` of them, 50 by default). Ids are hashed with 64-bit blake2b
    (person ``"user"`` or ``"item"``); the low and high 32 bits modulo ``buckets`` are the
    two buckets. A history entry weighs ``exp(-age / recency_tau)``, age measured from the
    user's newest event, times ``clip(value, 0, 5) / 5 + 0.1`` for a rating with a value.
    ``item_tags`` is how many tag slots the item tower reads (0: it reads no tags).
    """

    history: int = 50
    buckets: int = 1 << 15
    recency_tau_seconds: float = 86_400.0
    item_tags: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.history <= 65_535:
            raise ValueError(f"history is 1 to 65535 entries, got {self.history}")
        if not 1 <= self.buckets <= 2**32:
            raise ValueError(f"buckets is 1 to 2**32, got {self.buckets}")
        if not self.recency_tau_seconds > 0:
            raise ValueError(f"recency_tau_seconds must be positive, got {self.recency_tau_seconds}")
        if not 0 <= self.item_tags <= MAX_ITEM_TAGS:
            raise ValueError(f"item_tags is 0 to {MAX_ITEM_TAGS} slots, got {self.item_tags}")
        if self.item_tags and self.buckets < 2:
            raise ValueError("tags need at least 2 buckets (bucket 0 is padding)")

    @property
    def item_tensors(self) -> tuple[TensorSpec, ...]:
        """The item tower's inputs under this contract, in call order."""
        return (*ITEM_TENSORS, ITEM_TAG_TENSOR) if self.item_tags else ITEM_TENSORS

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``inputs`` section."""
        return {
            "format": CONTRACT_FORMAT,
            "history": self.history,
            "item_features": ITEM_FEATURES,
            "feature_names": list(FEATURE_NAMES),
            "event_types": list(EVENT_TYPES),
            "hashing": {"scheme": "blake2b-64, low/high 32 bits mod buckets", "buckets": self.buckets},
            "recency_tau_seconds": self.recency_tau_seconds,
            "item_tags": self.item_tags,
            "user_tower": [spec.to_json() for spec in USER_TENSORS],
            "item_tower": [spec.to_json() for spec in self.item_tensors],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputContract:
        try:
            if int(data.get("format", CONTRACT_FORMAT)) != CONTRACT_FORMAT:
                raise RegistryError(f"unknown input contract format {data.get('format')!r}")
            if int(data.get("item_features", ITEM_FEATURES)) != ITEM_FEATURES:
                raise RegistryError(
                    f"the manifest's towers read {data['item_features']} item features; "
                    f"this embstream builds {ITEM_FEATURES}"
                )
            return cls(
                history=int(data["history"]),
                buckets=int(data["hashing"]["buckets"]),
                recency_tau_seconds=float(data["recency_tau_seconds"]),
                item_tags=int(data.get("item_tags", 0)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise RegistryError(f"malformed input contract: {error}") from error
