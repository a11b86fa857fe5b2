from __future__ import annotations

from pathlib import Path

import pytest

from models.errors import TrainingError
from models.interaction_log import read_interaction_log


def test_json_lines_are_read_sorted_and_bad_rows_counted(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"user_id": "a", "item_id": "x", "type": "click", "ts": 1700000002000}\n'
        "not json\n\n"
        '{"user_id": "b", "item_id": "y", "type": "rating", "value": 4, "ts": 1700000001000}\n'
        '{"user_id": "c", "item_id": "z", "type": "teleport", "ts": 1700000003000}\n'
        '{"user_id": "d", "item_id": "z", "type": "view"}\n'
    )
    log = read_interaction_log(path)
    assert [e["user_id"] for e in log.events] == ["b", "a"]
    assert log.events[0]["value"] == 4.0
    assert log.skipped == {
        "not JSON": 1,
        "unknown type 'teleport'": 1,
        "missing ts (training needs event times)": 1,
    }


def test_csv_with_the_contract_columns(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,type,value,ts\nu1,i1,purchase,,1700000000000\nu2,,view,,1700000000001\n")
    log = read_interaction_log(path)
    assert log.events == [{"user_id": "u1", "item_id": "i1", "type": "purchase", "ts": 1_700_000_000_000}]
    assert log.skipped == {"missing user_id or item_id": 1}


def test_a_ratings_file_becomes_rating_events_with_millisecond_times(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n")
    log = read_interaction_log(path)
    assert log.events[0] == {
        "user_id": "1",
        "item_id": "31",
        "type": "rating",
        "value": 2.5,
        "ts": 1_260_759_144_000,
    }


def test_unusable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no such events file"):
        read_interaction_log(tmp_path / "missing.jsonl")
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(TrainingError, match="needs user_id and item_id"):
        read_interaction_log(tmp_path / "cols.csv")
    (tmp_path / "empty.jsonl").write_text("[1]\n")
    with pytest.raises(TrainingError, match="no usable events"):
        read_interaction_log(tmp_path / "empty.jsonl")


def test_item_tags_are_read_from_json_lists_and_csv_genres(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(
        "userId,movieId,rating,timestamp,genres\n"
        "1,31,2.5,1260759144,Drama|Crime\n"
        "1,32,3.0,1260759145,\n"
        f"1,33,3.0,1260759146,{'|'.join(f'g{n}' for n in range(9))}\n"
    )
    log = read_interaction_log(path)
    assert log.events[0]["item_tags"] == ["Drama", "Crime"]
    assert "item_tags" not in log.events[1]  # an empty cell declares nothing
    assert log.skipped == {"item_tags has more than 8 tags": 1}
    lines = tmp_path / "events.jsonl"
    lines.write_text(
        '{"user_id": "u", "item_id": "i", "type": "view", "ts": 1700000000000, "item_tags": ["a", "b"]}\n'
        '{"user_id": "u", "item_id": "j", "type": "view", "ts": 1700000000001, "item_tags": []}\n'
        '{"user_id": "u", "item_id": "k", "type": "view", "ts": 1700000000002, "item_tags": [1]}\n'
        '{"user_id": "u", "item_id": "l", "type": "view", "ts": 1700000000003, "item_tags": ["\\ud800"]}\n'
    )
    log = read_interaction_log(lines)
    assert [event.get("item_tags") for event in log.events] == [["a", "b"], []]
    assert log.skipped == {"item_tags must be a list of strings": 1, "item_tags is not valid Unicode": 1}
