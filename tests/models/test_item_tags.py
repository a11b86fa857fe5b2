"""Item tags as an input of the item tower: a version that reads them finds items that had
no interaction in its training period (cold-start items) far better than one that does not,
on a log whose items carry their cluster as a tag; children keep their parent's
architecture options (tags, user-id dropout) unless told otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.encoder import EncoderConfig
from models.errors import TrainingError
from models.registry import EncoderRegistry
from models.synthetic import SyntheticWorld
from models.versioning import VersionRequest, train_version

SMALL = EncoderConfig(dim=16, id_dim=8, buckets=1024, hidden=32, history=10)


@pytest.fixture(scope="module")
def tagged_events() -> list[dict[str, Any]]:
    """3,000 items in 8 clusters, each item tagged with its cluster: many items of the last
    10 % are new to the first 90 %."""
    world = SyntheticWorld(users=300, items=3_000, clusters=8, seed=0)
    events = world.events(8_000, start_ms=1_700_000_000_000, span_ms=86_400_000)
    for event in events:
        event["item_tags"] = [f"cluster-{world.item_cluster[int(str(event['item_id'])[1:])]}"]
    return events


def _report(path: Path, events: list[dict[str, Any]], **request: Any) -> dict[str, Any]:
    _, report = train_version(
        EncoderRegistry(path),
        events,
        VersionRequest(encoder=SMALL, epochs=6, batch_size=256, seed=3, **request),
    )
    return report


def test_reading_tags_finds_cold_start_items(tmp_path: Path, tagged_events: list[dict[str, Any]]) -> None:
    with_tags = _report(tmp_path / "tags", tagged_events, item_tags=True)
    without = _report(tmp_path / "plain", tagged_events, item_tags=False)
    cold = with_tags["cold_items"]
    assert cold["queries"] == without["cold_items"]["queries"] >= 50
    assert 0 < cold["share"] < 0.5
    # Among the cold items (about 90 here, so random is about 0.11), tags tell the user's
    # clusters apart; without them a cold item is an untrained id bucket.
    among_tags, among_plain = (
        cold["recall_among_cold"]["new"],
        without["cold_items"]["recall_among_cold"]["new"],
    )
    assert among_tags > 0.2 and among_tags > 1.8 * among_plain, (among_tags, among_plain)
    # popularity knows nothing of an item without interactions: it cannot beat chance there
    assert cold["recall_among_cold"]["popularity"] < among_tags
    assert set(cold["recall"]) == {"new", "unaligned", "popularity", "mf"}


def test_a_child_keeps_its_parents_tags_and_user_id_dropout_unless_told(
    tmp_path: Path, tagged_events: list[dict[str, Any]]
) -> None:
    registry = EncoderRegistry(tmp_path)
    head = tagged_events[:3_000]
    first = VersionRequest(encoder=SMALL, epochs=1, item_tags=True, user_id_dropout=0.3, logq_weight=2.0)
    train_version(registry, head, first)
    train_version(registry, head, VersionRequest(encoder=SMALL, epochs=1))
    told = VersionRequest(encoder=SMALL, epochs=1, item_tags=False, user_id_dropout=0.0)
    train_version(registry, head, told)
    architectures = [registry.manifest(version).architecture for version in (1, 2, 3)]
    assert [a.item_tags for a in architectures if a is not None] == [True, True, False]
    assert [a.user_id_dropout for a in architectures if a is not None] == [0.3, 0.3, 0.0]
    assert [registry.manifest(version).inputs.item_tags for version in (1, 2, 3)] == [8, 8, 0]
    assert [registry.manifest(version).training["logq_weight"] for version in (1, 2)] == [2.0, 1.0]
    with pytest.raises(TrainingError, match="user_id_dropout"):
        train_version(registry, head, VersionRequest(encoder=SMALL, epochs=1, user_id_dropout=1.0))
