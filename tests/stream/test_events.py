from __future__ import annotations

import json
import random

import pytest

from stream.ingest.events import Interaction, Rejection, _parse_checked, parse_event

NOW = 1_800_000_000_000
SKEW = 86_400_000


def _parse(raw: bytes | None, broker_ts: int = NOW - 5) -> Interaction | Rejection:
    return parse_event(raw, broker_ts, NOW, SKEW)


def test_a_valid_event_parses_and_extra_fields_are_ignored() -> None:
    event = _parse(
        b'{"user_id": "u1", "item_id": "i1", "type": "rating", "value": 4, "ts": 1700000000000, "x": [1]}'
    )
    assert event == Interaction("u1", "i1", 4, 4.0, 1_700_000_000_000)


def test_item_tags_are_read_and_an_empty_list_is_kept_apart_from_none() -> None:
    base = '{"user_id": "u", "item_id": "i", "type": "view"%s}'
    assert _parse((base % ', "item_tags": ["Drama", "Crime"]').encode()).item_tags == ("Drama", "Crime")
    assert _parse((base % ', "item_tags": []').encode()).item_tags == ()
    assert _parse((base % ', "item_tags": null').encode()).item_tags is None
    assert _parse((base % "").encode()).item_tags is None
    assert _parse(
        base.replace('"view"%s', '"view", "item_tags": ["Film-Noir\\u00e9"]').encode()
    ).item_tags == ("Film-Noiré",)


def test_the_broker_timestamp_is_used_when_ts_is_absent_or_null() -> None:
    assert _parse(b'{"user_id": "u", "item_id": "i", "type": "view"}').ts_ms == NOW - 5
    assert _parse(b'{"user_id": "u", "item_id": "i", "type": "view", "ts": null}').ts_ms == NOW - 5


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty value"),
        (b"\xff\xfe", "value is not JSON"),
        (b"[]", "value is not a JSON object"),
        (b'{"item_id": "i", "type": "view"}', "user_id missing or not a string"),
        (b'{"user_id": 3, "item_id": "i", "type": "view"}', "user_id missing or not a string"),
        (b'{"user_id": "", "item_id": "i", "type": "view"}', "user_id must have 1 to 256 characters"),
        (b'{"user_id": "u", "item_id": "' + b"x" * 300 + b'", "type": "view"}', "item_id must have"),
        (b'{"user_id": "u", "item_id": "i", "type": "like"}', "type must be one of"),
        (b'{"user_id": "u", "item_id": "i", "type": ["view"]}', "type must be one of"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "value": "5"}', "value must be a number"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "value": true}', "value must be a number"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "value": 1e999}', "value"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "ts": "now"}', "ts must be an integer"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "ts": 1.5}', "ts must be an integer"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "ts": -1}', "ts is out of range"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "ts": 1900000000000}', "ts is out of range"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": "a"}', "item_tags must be a list"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": [1]}', "item_tags must be a list"),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": [""]}', "an item tag must have"),
        (
            b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": ["' + b"t" * 65 + b'"]}',
            "an item tag must have 1 to 64",
        ),
        (
            b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": '
            + json.dumps([f"t{n}" for n in range(9)]).encode()
            + b"}",
            "item_tags has more than 8",
        ),
        (b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": ["\\ud800"]}', "item_tags is not"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(raw: bytes | None, reason: str) -> None:
    result = _parse(raw)
    assert isinstance(result, Rejection)
    assert result.reason.startswith(reason)


TRICKY = [
    b'{"user_id": "u", "item_id": "i", "type": "rating", "value": 1e400}',
    b'{"user_id": "u", "item_id": "i", "type": "rating", "value": 100000000000000000000000}',
    b'{"user_id": "u", "item_id": "i", "type": "rating", "value": ' + b"9" * 400 + b"}",
    b'{"user_id": "u", "item_id": "i", "type": "view", "ts": ' + b"9" * 40 + b"}",
    b'{"user_id": "u", "item_id": "i", "type": "view", "ts": 1.8e12}',
    b'{"user_id": "u", "item_id": "i", "type": "view", "ts": true}',
    b'{"user_id": "u", "item_id": "i", "type": "rating", "value": false}',
    b'{"user_id": "u", "user_id": "v", "item_id": "i", "type": "view"}',
    b'{"user_id": "\\ud800", "item_id": "i", "type": "view"}',
    b'{"user_id": "\xff", "item_id": "i", "type": "view"}',
    b'{"user_id": "' + "é".encode() * 256 + b'", "item_id": "i", "type": "view"}',
    b'{"user_id": "' + "é".encode() * 257 + b'", "item_id": "i", "type": "view"}',
    b'{"user_id": "u", "item_id": "i", "type": "VIEW"}',
    b'{"user_id": "u", "item_id": "i", "type": "view", "value": null, "ts": null}',
    b'  {"user_id": "u", "item_id": "i", "type": "view"}  ',
    b'{"user_id": "u", "item_id": "i", "type": "view"} x',
    b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": ["a", "b"]}',
    b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": ["a", "b"], "x": "y"}',
    b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": ["a"], "item_tags": ["b"]}',
    b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": ["a", 1]}',
    b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": [["a"]]}',
    b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": {"a": "b"}}',
    b'{"user_id": "u", "item_id": "i", "type": "view", "item_tags": ["a:", "\\"", "b,c"]}',
    b"[]",
    b"",
    None,
]


def _mutations(seed: int, count: int) -> list[bytes]:
    """Valid events with one byte changed, dropped or duplicated, and fields swapped."""
    rng = random.Random(seed)
    base = b'{"user_id": "u1", "item_id": "i-2", "type": "rating", "value": 4.5, "ts": 1800000000000' + (
        b', "item_tags": ["a", "bc"]}' if seed % 2 else b"}"
    )
    out = []
    for _ in range(count):
        data = bytearray(base)
        at = rng.randrange(len(data))
        operation = rng.randrange(3)
        if operation == 0:
            data[at] = rng.randrange(256)
        elif operation == 1:
            del data[at]
        else:
            data.insert(at, data[at])
        out.append(bytes(data))
    return out


@pytest.mark.parametrize("raw", TRICKY + _mutations(seed=11, count=400) + _mutations(seed=12, count=300))
def test_the_fast_decoder_agrees_with_the_field_checks(raw: bytes | None) -> None:
    args = (1_800_000_000_000, 1_800_000_000_500, 86_400_000)
    assert parse_event(raw, *args) == _parse_checked(raw, *args)


@pytest.mark.parametrize("value", ["3.4e38", "-3.4e38", "4.5"])
def test_values_within_float32_are_kept(value: str) -> None:
    raw = b'{"user_id": "u", "item_id": "i", "type": "rating", "value": ' + value.encode() + b"}"
    parsed = parse_event(raw, NOW, NOW, SKEW)
    assert isinstance(parsed, Interaction) and parsed.value == float(value)


@pytest.mark.parametrize("value", ["3.5e38", "-1e300", "100000000000000000000000000000000000000000"])
def test_values_beyond_float32_are_rejected_not_stored_as_infinity(value: str) -> None:
    raw = b'{"user_id": "u", "item_id": "i", "type": "rating", "value": ' + value.encode() + b"}"
    parsed = parse_event(raw, NOW, NOW, SKEW)
    assert isinstance(parsed, Rejection) and "float32" in parsed.reason
