"""Scale-out messages: the state changelog and the item-keyed repartition of events.

With ``EMBSTREAM_SCALE_OUT`` on, every batch a worker applies for one source partition is
first published as a :class:`ChangelogBatch` to that partition of the source topic's
changelog topic (``<source>.changelog``), and only then committed to the worker's RocksDB.
Every other worker follows the changelog and applies the batches of partitions it does not
own, so each node holds every vector (lookups from any node) and a node taking over a
partition only reads the changelog's tail.

A batch carries its source range (``start`` = the stored offset before it, ``end`` = the next
offset after it) and the consumer-group generation of the worker that wrote it. Readers apply
batches in changelog order and drop a batch whose generation is lower than one they already
saw (a fenced worker) or whose range does not continue theirs. Large batches are split into
parts; a reader applies a batch only once every part is there.

An :class:`ItemBundle` carries the item side of a batch of interactions (item id, event type,
value, timestamp, declared item tags, and the source offset of each event) to the item's partition of
``<source>.by-item``; item state is owned by that partition. The source offsets let the item
side skip events it already applied when a bundle is published twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np

__all__ = [
    "NO_OFFSET",
    "ChangelogAssembler",
    "ChangelogBatch",
    "ItemBundle",
    "decode_bundle",
    "decode_changelog",
    "encode_bundle",
    "encode_changelog",
    "split_changelog",
]

#: ``start`` of a batch applied to a partition that had no stored offset.
NO_OFFSET = -1
#: Upper bound of one changelog message's payload; larger batches are split into parts.
MAX_PART_BYTES = 512 * 1024


class ChangelogBatch(msgspec.Struct, frozen=True):
    """The result of one batch for one source partition: entity states and vectors."""

    source_topic: str
    partition: int
    start: int  # the stored offset before the batch (NO_OFFSET if there was none)
    end: int  # the next source offset to apply after it
    generation: int
    kind: str  # "user" or "item"
    ids: list[str] = []
    states: list[bytes] = []
    versions: list[int] = []  # vector versions carried (the writer's refresh versions)
    vectors: list[bytes] = []  # per version: float32 matrix (len(ids) x dim), row-major
    dims: list[int] = []
    written_at: int = 0
    #: item side only: source partition of ``interactions`` -> next source offset applied.
    watermarks: dict[int, int] = {}
    fence: bool = False  # a new owner's first message: raises the generation, changes nothing
    #: on a fence: the group's generations started again; readers take this one as the highest
    restart: bool = False
    part: int = 0
    parts: int = 1

    def matrix(self, index: int) -> np.ndarray:
        return np.frombuffer(self.vectors[index], dtype=np.float32).reshape(len(self.ids), self.dims[index])


_encode = msgspec.msgpack.Encoder().encode
_decode_changelog = msgspec.msgpack.Decoder(ChangelogBatch).decode


def encode_changelog(batch: ChangelogBatch) -> bytes:
    return _encode(batch)


def decode_changelog(raw: bytes) -> ChangelogBatch:
    """Raises ``msgspec.DecodeError`` (a ``ValueError``) on bytes that are not a batch."""
    return _decode_changelog(raw)


def split_changelog(batch: ChangelogBatch, max_bytes: int = MAX_PART_BYTES) -> list[ChangelogBatch]:
    """``batch`` as parts of at most about ``max_bytes`` each (one part when it fits)."""
    count = len(batch.ids)
    if count <= 1:
        return [batch]
    per_entity = sum(len(state) for state in batch.states) / count + sum(4 * dim for dim in batch.dims)
    step = max(1, int(max_bytes // max(per_entity + len(batch.ids[0]) + 8, 1)))
    if step >= count:
        return [batch]
    ranges = [(first, min(first + step, count)) for first in range(0, count, step)]
    parts = []
    for index, (first, last) in enumerate(ranges):
        vectors = [batch.matrix(v)[first:last].tobytes() for v in range(len(batch.versions))]
        parts.append(
            msgspec.structs.replace(
                batch,
                ids=batch.ids[first:last],
                states=batch.states[first:last],
                vectors=vectors,
                part=index,
                parts=len(ranges),
            )
        )
    return parts


@dataclass
class ChangelogAssembler:
    """Joins the parts of a batch read from one changelog partition, in order."""

    _pending: dict[tuple[str, int], list[ChangelogBatch]] = field(default_factory=dict)

    def add(self, part: ChangelogBatch) -> ChangelogBatch | None:
        """The whole batch once its last part arrives; ``None`` until then. A first part
        arriving over unfinished parts drops them (their writer stopped half-way and the
        batch was never committed, or is being published again)."""
        key = (part.source_topic, part.partition)
        if part.part == 0:
            self._pending[key] = []
        pending = self._pending.get(key)
        if pending is None or part.part != len(pending):
            self._pending.pop(key, None)
            return None
        pending.append(part)
        if len(pending) < part.parts:
            return None
        del self._pending[key]
        return _join(pending)

    def pending(self, source_topic: str, partition: int) -> bool:
        """Whether parts of an unfinished batch of this partition are held."""
        return bool(self._pending.get((source_topic, partition)))

    def reset(self, source_topic: str, partition: int) -> None:
        self._pending.pop((source_topic, partition), None)


def _join(parts: Sequence[ChangelogBatch]) -> ChangelogBatch:
    if len(parts) == 1:
        return msgspec.structs.replace(parts[0], part=0, parts=1)
    first = parts[0]
    return msgspec.structs.replace(
        first,
        ids=[entity_id for part in parts for entity_id in part.ids],
        states=[state for part in parts for state in part.states],
        vectors=[b"".join(part.vectors[v] for part in parts) for v in range(len(first.versions))],
        part=0,
        parts=1,
    )


class ItemBundle(msgspec.Struct, frozen=True):
    """Item events of one batch of interactions from one source partition, for one item
    partition. Columns are little-endian arrays, one entry per event, in source order."""

    source_partition: int
    offsets: bytes  # int64: the source offset of each event
    item_ids: list[str]
    type_codes: bytes  # uint8
    values: bytes  # float32 (NaN: none)
    timestamps_ms: bytes  # int64
    # The ``item_tags`` of the events that declare them, by entry (absent in older bundles).
    item_tags: dict[int, list[str]] = {}

    def columns(self) -> Iterator[tuple[int, str, int, float, int]]:
        yield from zip(
            np.frombuffer(self.offsets, np.int64).tolist(),
            self.item_ids,
            np.frombuffer(self.type_codes, np.uint8).tolist(),
            np.frombuffer(self.values, np.float32).tolist(),
            np.frombuffer(self.timestamps_ms, np.int64).tolist(),
            strict=True,
        )


_decode_bundle = msgspec.msgpack.Decoder(ItemBundle).decode


def encode_bundle(bundle: ItemBundle) -> bytes:
    return _encode(bundle)


def decode_bundle(raw: bytes) -> ItemBundle:
    return _decode_bundle(raw)
