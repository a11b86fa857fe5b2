from __future__ import annotations

import pytest

from stream.events import Interaction, Rejection, parse_event

NOW = 1_800_000_000_000
SKEW = 86_400_000


def _parse(raw: bytes | None, broker_ts: int = NOW - 5) -> Interaction | Rejection:
    return parse_event(raw, broker_ts, NOW, SKEW)


def test_a_valid_event_parses_and_extra_fields_are_ignored() -> None:
    event = _parse(
        b'{"user_id": "u1", "item_id": "i1", "type": "rating", "value": 4, "ts": 1700000000000, "x": [1]}'
    )
    assert event == Interaction("u1", "i1", 4, 4.0, 1_700_000_000_000)


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
    ],
)
def test_bad_input_is_rejected_with_a_reason(raw: bytes | None, reason: str) -> None:
    result = _parse(raw)
    assert isinstance(result, Rejection)
    assert result.reason.startswith(reason)
