"""Outgoing messages of one batch (embedding updates, dead letters), framed as bytes so they
can be committed to RocksDB in the same write batch as the state that produced them.

After a crash the worker re-publishes the last committed outbox: outputs are delivered at
least once, and never lost. Framing per message (little endian)::

    topic_len u16 | topic | key_len i32 (-1 = none) | key | value_len u32 | value
    | header_count u8 | (name_len u16 | name | value_len u32 | value) * header_count
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["OutgoingMessage", "decode_outbox", "encode_outbox"]

_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    #: An explicit partition (not kept in the outbox: only the scale-out path sets it, and it
    #: publishes before it commits). ``None``: ``crc32(key) % partitions``, or 0 unkeyed.
    partition: int | None = None


def encode_outbox(messages: list[OutgoingMessage]) -> bytes:
    parts: list[bytes] = []
    for message in messages:
        topic = message.topic.encode()
        parts += [_U16.pack(len(topic)), topic]
        if message.key is None:
            parts.append(_I32.pack(-1))
        else:
            parts += [_I32.pack(len(message.key)), message.key]
        parts += [_U32.pack(len(message.value)), message.value, bytes([len(message.headers)])]
        for name, value in message.headers:
            raw = name.encode()
            parts += [_U16.pack(len(raw)), raw, _U32.pack(len(value)), value]
    return b"".join(parts)


def decode_outbox(data: bytes) -> list[OutgoingMessage]:
    messages: list[OutgoingMessage] = []
    offset = 0

    def take(length: int) -> bytes:
        nonlocal offset
        chunk = data[offset : offset + length]
        offset += length
        return chunk

    while offset < len(data):
        topic = take(_U16.unpack(take(2))[0]).decode()
        key_length = _I32.unpack(take(4))[0]
        key = None if key_length < 0 else take(key_length)
        value = take(_U32.unpack(take(4))[0])
        headers = []
        for _ in range(take(1)[0]):
            name = take(_U16.unpack(take(2))[0]).decode()
            headers.append((name, take(_U32.unpack(take(4))[0])))
        messages.append(OutgoingMessage(topic, key, value, tuple(headers)))
    return messages
