"""Reading an interaction log for training: JSON lines in the event contract, or CSV.

CSV needs ``user_id`` and ``item_id`` columns and may have ``type``, ``value``, ``ts`` and
``item_tags`` (tags separated by ``|``, as in MovieLens ``genres``).
Common ratings-file names are understood too (``userId``/``movieId``/``rating``/``timestamp``
and similar): a ``rating`` column becomes a ``rating`` event with that value, and timestamps
in seconds are converted to milliseconds. Rows that cannot be used are counted, not fatal.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import TrainingError
from models.features import EVENT_TYPES, check_item_tags

__all__ = ["InteractionLog", "item_tags", "normalise_event", "read_interaction_log"]

_ALIASES = {
    "user_id": ("user_id", "userid", "user", "uid", "reviewerid"),
    "item_id": ("item_id", "itemid", "item", "movieid", "product_id", "productid", "asin", "iid"),
    "type": ("type", "event", "event_type", "action"),
    "value": ("value", "rating", "score", "overall"),
    "ts": ("ts", "timestamp", "time", "unixreviewtime", "event_time"),
    "item_tags": ("item_tags", "tags", "genres", "categories"),
}
_SECONDS_LIMIT = 100_000_000_000  # below this an epoch timestamp is in seconds, not ms


@dataclass
class InteractionLog:
    """Valid events sorted by time, and the reasons rows were skipped."""

    events: list[dict[str, Any]]
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def span_ms(self) -> int:
        return int(self.events[-1]["ts"]) - int(self.events[0]["ts"]) if self.events else 0


def normalise_event(row: dict[str, Any], default_type: str = "view") -> dict[str, Any] | str:
    """``row`` as an event dict (``user_id``, ``item_id``, ``type``, ``value`` and
    ``item_tags`` when given, ``ts`` in milliseconds), or the reason it cannot be used."""
    user, item = row.get("user_id"), row.get("item_id")
    if user in (None, "") or item in (None, ""):
        return "missing user_id or item_id"
    event_type = row.get("type") or default_type
    if event_type not in EVENT_TYPES:
        return f"unknown type {str(event_type)[:20]!r}"
    event: dict[str, Any] = {"user_id": str(user), "item_id": str(item), "type": event_type}
    value = row.get("value")
    if value not in (None, ""):
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return "value is not a number"
        if not math.isfinite(number):
            return "value is not finite"
        event["value"] = number
    ts = row.get("ts")
    if ts in (None, ""):
        return "missing ts (training needs event times)"
    try:
        stamp = int(float(ts))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "ts is not a number"
    event["ts"] = stamp * 1000 if 0 < stamp < _SECONDS_LIMIT else stamp
    tags = row.get("item_tags")
    if tags not in (None, ""):  # an empty CSV cell declares nothing
        checked = item_tags(tags)
        if isinstance(checked, str):
            return checked
        event["item_tags"] = checked
    return event


def item_tags(tags: Any) -> list[str] | str:
    """An event's ``item_tags`` (a list of strings, or one string of ``|``-separated tags) as
    a list, or the reason it cannot be used: the stream's contract
    (:func:`models.features.check_item_tags`)."""
    if isinstance(tags, str):
        tags = [tag.strip() for tag in tags.split("|") if tag.strip()]
    checked = check_item_tags(tags)
    return checked if isinstance(checked, str) else list(checked)


def _csv_rows(path: Path) -> tuple[list[dict[str, Any]], str]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise TrainingError(f"{path} is empty")
        columns = {name.strip().lower(): name for name in reader.fieldnames}
        mapping = {}
        for canonical, aliases in _ALIASES.items():
            found = next((columns[a] for a in aliases if a in columns), None)
            if found is not None:
                mapping[canonical] = found
        if "user_id" not in mapping or "item_id" not in mapping:
            raise TrainingError(
                f"{path}: CSV needs user_id and item_id columns (found {list(reader.fieldnames)})"
            )
        rating_file = "type" not in mapping and mapping.get("value", "").lower() in ("rating", "overall")
        rows = [{key: row.get(column) for key, column in mapping.items()} for row in reader]
    return rows, "rating" if rating_file else "view"


def read_interaction_log(path: str | Path) -> InteractionLog:
    """Read ``path`` (``.csv`` or JSON lines); raises :class:`TrainingError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no such events file: {path}")
    skipped: Counter[str] = Counter()
    if path.suffix.lower() == ".csv":
        rows, default_type = _csv_rows(path)
    else:
        rows, default_type = [], "view"
        with path.open("rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    skipped["not JSON"] += 1
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    skipped["not a JSON object"] += 1
    events = []
    for row in rows:
        result = normalise_event(row, default_type)
        if isinstance(result, str):
            skipped[result] += 1
        else:
            events.append(result)
    if not events:
        raise TrainingError(f"{path}: no usable events ({dict(skipped)})")
    events.sort(key=lambda event: event["ts"])
    return InteractionLog(events, skipped)
