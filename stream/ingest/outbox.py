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
_NO_KEY = _I32.pack(-1)


# Not frozen: one is built per update message, and a frozen dataclass's __init__ sets each
# field through object.__setattr__.
@dataclass(slots=True)
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
    append = parts.append
    prefixes: dict[str, bytes] = {}  # each topic's length and name, packed once
    for message in messages:
        prefix = prefixes.get(message.topic)
        if prefix is None:
            topic = message.topic.encode()
            prefix = prefixes[message.topic] = _U16.pack(len(topic)) + topic
        key, value = message.key, message.value
        if key is None:
            append(prefix + _NO_KEY + _U32.pack(len(value)))
        else:
            append(prefix + _I32.pack(len(key)) + key + _U32.pack(len(value)))
        append(value)
        append(bytes([len(message.headers)]))
        for name, header in message.headers:
            raw = name.encode()
            append(_U16.pack(len(raw)) + raw + _U32.pack(len(header)) + header)
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
