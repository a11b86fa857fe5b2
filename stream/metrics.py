"""Worker metrics, rendered in the Prometheus text format."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from store.item_indexes import IndexStatus
    from store.serving_cache import ServingCache

__all__ = ["LAG_BUCKETS_SECONDS", "STATUS_SAMPLES", "BatchCounts", "Metrics"]


class BatchCounts(Protocol):
    """What an applied batch counts (``stream.ingest.records.BatchOutcome``)."""

    @property
    def consumed(self) -> int: ...
    @property
    def applied(self) -> int: ...
    @property
    def item_events(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...
    @property
    def quarantined(self) -> int: ...
    @property
    def written(self) -> Mapping[tuple[str, int], int]: ...
    @property
    def lags_seconds(self) -> list[float]: ...


STATUS_SAMPLES = 150  # 5 minutes at one row every 2 s

LAG_BUCKETS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    """Counters and a refresh-lag histogram, safe to update from the processing thread."""

    events_consumed: int = 0
    events_applied: int = 0
    item_events_applied: int = 0
    events_duplicate: int = 0
    batches: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: Records dead-lettered because they killed the worker twice (stream/poison.py).
    quarantined: int = 0
    written: Counter[tuple[str, int]] = field(default_factory=Counter)
    control_rejected: Counter[str] = field(default_factory=Counter)  # by reason
    unauthorized: int = 0  # API requests refused for a missing or wrong token
    #: Recommendation answers by outcome (ok, no_user_vector, index_building, no_index, ...).
    recommendations: Counter[str] = field(default_factory=Counter)
    #: With item indexes: a callable giving each indexed version's status.
    item_indexes: Callable[[], dict[int, IndexStatus]] | None = field(default=None, repr=False)
    lag_buckets: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS_SECONDS) + 1))
    lag_sum: float = 0.0
    lag_count: int = 0
    recent_lags: deque[float] = field(default_factory=lambda: deque(maxlen=5_000))
    consumed_history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=120))
    #: One row per :meth:`sample` (every few seconds): what the status page plots.
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=STATUS_SAMPLES))
    #: With scale-out: a callable giving owned partitions and changelog figures.
    scale_out: Callable[[], dict[str, Any]] | None = field(default=None, repr=False)
    _interval_lags: list[float] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, outcome: BatchCounts) -> None:
        """Add one applied batch."""
        self.events_consumed += outcome.consumed
        self.events_applied += outcome.applied
        self.item_events_applied += outcome.item_events
        self.events_duplicate += outcome.duplicates
        self.batches += 1
        self.rejected.update(outcome.rejected)
        self.quarantined += outcome.quarantined
        self.written.update(outcome.written)
        self.observe_lags(outcome.lags_seconds)

    def observe_lags(self, lags_seconds: list[float]) -> None:
        with self._lock:
            for lag in lags_seconds:
                self.lag_buckets[bisect.bisect_left(LAG_BUCKETS_SECONDS, lag)] += 1
                self.lag_sum += lag
            self.lag_count += len(lags_seconds)
            self.recent_lags.extend(lags_seconds)
            self._interval_lags.extend(lags_seconds)

    @property
    def dead_letters(self) -> int:
        return sum(self.rejected.values())

    def sample(self, now: float | None = None, wall_ms: int | None = None) -> dict[str, Any]:
        """Record one row of the status history: events/s now, the freshness percentiles of
        the refreshes since the previous row (``None`` when there were none), dead letters."""
        wall_ms = int(time.time() * 1000) if wall_ms is None else wall_ms
        with self._lock:
            lags, self._interval_lags = sorted(self._interval_lags), []

        def percentile_ms(fraction: float) -> float | None:
            return None if not lags else round(lags[min(len(lags) - 1, int(fraction * len(lags)))] * 1000, 1)

        row: dict[str, Any] = {
            "t": wall_ms,
            "events_per_second": round(self.events_per_second(now), 1),
            "freshness_p50_ms": percentile_ms(0.5),
            "freshness_p99_ms": percentile_ms(0.99),
            "dead_letters": self.dead_letters,
        }
        self.history.append(row)
        return row

    def lag_percentile(self, fraction: float) -> float | None:
        with self._lock:
            lags = sorted(self.recent_lags)
        if not lags:
            return None
        return lags[min(len(lags) - 1, int(fraction * len(lags)))]

    def events_per_second(self, now: float | None = None, window_s: float = 5.0) -> float:
        """Consumption rate over the last ``window_s`` seconds (sampled by :meth:`tick`)."""
        now = time.monotonic() if now is None else now
        self.tick(now)
        past = [sample for sample in self.consumed_history if now - sample[0] <= window_s]
        if len(past) < 2 or past[-1][0] == past[0][0]:
            return 0.0
        return (past[-1][1] - past[0][1]) / (past[-1][0] - past[0][0])

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self.consumed_history or now - self.consumed_history[-1][0] >= 0.5:
            self.consumed_history.append((now, self.events_consumed))

    def render(
        self,
        entities: dict[str, dict[int, int]],
        serving: int | None,
        active: int | None,
        rollout: dict[str, Any] | None = None,
        serving_cache: ServingCache | None = None,
    ) -> str:
        """The Prometheus exposition text."""
        lines = [
            "# HELP embstream_events_consumed_total Records read from the interactions topic.",
            "# TYPE embstream_events_consumed_total counter",
            f"embstream_events_consumed_total {self.events_consumed}",
            "# HELP embstream_events_applied_total Valid events applied to entity state.",
            "# TYPE embstream_events_applied_total counter",
            f"embstream_events_applied_total {self.events_applied}",
            "# HELP embstream_item_events_applied_total Events applied to item state (with scale-out, "
            "by the owner of the item's partition).",
            "# TYPE embstream_item_events_applied_total counter",
            f"embstream_item_events_applied_total {self.item_events_applied}",
            "# HELP embstream_events_duplicate_total Redelivered events skipped (already applied).",
            "# TYPE embstream_events_duplicate_total counter",
            f"embstream_events_duplicate_total {self.events_duplicate}",
            "# HELP embstream_events_rejected_total Events sent to the dead-letter topic, by reason.",
            "# TYPE embstream_events_rejected_total counter",
        ]
        for reason, count in sorted(self.rejected.items()):
            label = reason.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'embstream_events_rejected_total{{reason="{label}"}} {count}')
        lines += [
            "# HELP embstream_events_quarantined_total Records dead-lettered because the worker "
            "died twice applying them (reason 'poison: crashed the worker').",
            "# TYPE embstream_events_quarantined_total counter",
            f"embstream_events_quarantined_total {self.quarantined}",
            "# HELP embstream_control_rejected_total Control messages ignored or refused, by reason "
            "(malformed, unsigned, forged, refused).",
            "# TYPE embstream_control_rejected_total counter",
            *(
                f'embstream_control_rejected_total{{reason="{reason}"}} {count}'
                for reason, count in sorted(self.control_rejected.items())
            ),
            "# HELP embstream_api_unauthorized_total API requests refused for a missing or wrong token.",
            "# TYPE embstream_api_unauthorized_total counter",
            f"embstream_api_unauthorized_total {self.unauthorized}",
            "# HELP embstream_embeddings_written_total Embeddings written, by kind and version.",
            "# TYPE embstream_embeddings_written_total counter",
        ]
        for (kind, version), count in sorted(self.written.items()):
            lines.append(f'embstream_embeddings_written_total{{kind="{kind}",version="{version}"}} {count}')
        lines += [
            "# HELP embstream_entities Entities holding a vector of a version, by kind.",
            "# TYPE embstream_entities gauge",
        ]
        for kind, versions in entities.items():
            for version, count in versions.items():
                lines.append(f'embstream_entities{{kind="{kind}",version="{version}"}} {count}')
        lines += [
            "# HELP embstream_serving_version The version reads use when none is asked for.",
            "# TYPE embstream_serving_version gauge",
            f"embstream_serving_version {serving or 0}",
            "# HELP embstream_active_encoder_version The version the worker refreshes with.",
            "# TYPE embstream_active_encoder_version gauge",
            f"embstream_active_encoder_version {active or 0}",
            "# HELP embstream_staged_version The version being rolled out (0: none).",
            "# TYPE embstream_staged_version gauge",
            f"embstream_staged_version {(rollout or {}).get('staged_version') or 0}",
            "# HELP embstream_backfill_entities Entities of the staged version filled (kind forward: the "
            "forward fill; user, item: the native backfill; index: the item index), and to do.",
            "# TYPE embstream_backfill_entities gauge",
        ]
        for kind, progress in ((rollout or {}).get("backfill") or {}).items():
            lines.append(f'embstream_backfill_entities{{kind="{kind}",state="done"}} {progress["done"]}')
            lines.append(f'embstream_backfill_entities{{kind="{kind}",state="total"}} {progress["total"]}')
        if serving_cache is not None:
            lines += [
                "# HELP embstream_serving_cache_vectors Serving-version vectors held in memory, by kind.",
                "# TYPE embstream_serving_cache_vectors gauge",
                *(
                    f'embstream_serving_cache_vectors{{kind="{kind}"}} {serving_cache.held(kind)}'
                    for kind in entities
                ),
                "# HELP embstream_serving_cache_bytes Bytes the serving cache has allocated "
                "(what its budget bounds).",
                "# TYPE embstream_serving_cache_bytes gauge",
                f"embstream_serving_cache_bytes {serving_cache.allocated_bytes}",
                "# HELP embstream_serving_cache_budget_bytes The serving cache's budget.",
                "# TYPE embstream_serving_cache_budget_bytes gauge",
                f"embstream_serving_cache_budget_bytes {serving_cache.budget_bytes}",
            ]
        if self.scale_out is not None:
            lines += _scale_out_lines(self.scale_out())
        if self.item_indexes is not None:
            lines += _index_lines(self.item_indexes(), self.recommendations)
        lines += [
            "# HELP embstream_batches_total Micro-batches processed.",
            "# TYPE embstream_batches_total counter",
            f"embstream_batches_total {self.batches}",
            "# HELP embstream_refresh_lag_seconds Event timestamp to embedding written.",
            "# TYPE embstream_refresh_lag_seconds histogram",
        ]
        with self._lock:
            cumulative = 0
            for bound, count in zip(LAG_BUCKETS_SECONDS, self.lag_buckets, strict=False):
                cumulative += count
                lines.append(f'embstream_refresh_lag_seconds_bucket{{le="{bound}"}} {cumulative}')
            lines.append(f'embstream_refresh_lag_seconds_bucket{{le="+Inf"}} {self.lag_count}')
            lines.append(f"embstream_refresh_lag_seconds_sum {self.lag_sum:.6f}")
            lines.append(f"embstream_refresh_lag_seconds_count {self.lag_count}")
        return "\n".join(lines) + "\n"


def _index_lines(statuses: dict[int, IndexStatus], answers: Counter[str]) -> list[str]:
    lines = [
        "# HELP embstream_item_index_items Items searchable in a version's item index, by segment.",
        "# TYPE embstream_item_index_items gauge",
    ]
    for version, status in statuses.items():
        for segment, items in (("graph", status.graph_items), ("fresh", status.fresh_items)):
            lines.append(f'embstream_item_index_items{{version="{version}",segment="{segment}"}} {items}')
    lines += [
        "# HELP embstream_item_index_forward_items Items of a version's index whose vector is a "
        "forward entry (a hot swap's forward fill, until the native backfill replaces it).",
        "# TYPE embstream_item_index_forward_items gauge",
        *(
            f'embstream_item_index_forward_items{{version="{v}"}} {s.forward_items}'
            for v, s in statuses.items()
        ),
        "# HELP embstream_item_index_ready 1 once a version's index is built and merged, else 0.",
        "# TYPE embstream_item_index_ready gauge",
        *(f'embstream_item_index_ready{{version="{v}"}} {int(s.ready)}' for v, s in statuses.items()),
        "# HELP embstream_recommendations_total Recommendation answers, by outcome.",
        "# TYPE embstream_recommendations_total counter",
        *(f'embstream_recommendations_total{{outcome="{o}"}} {n}' for o, n in sorted(answers.items())),
    ]
    return lines


def _scale_out_lines(status: dict[str, Any]) -> list[str]:
    owned = status["owned"]
    return [
        "# HELP embstream_owned_partitions Partitions this worker owns, by source topic.",
        "# TYPE embstream_owned_partitions gauge",
        f'embstream_owned_partitions{{topic="interactions"}} {len(owned["interactions"])}',
        f'embstream_owned_partitions{{topic="by_item"}} {len(owned["by_item"])}',
        "# HELP embstream_changelog_lag_records Changelog records of other workers not applied yet.",
        "# TYPE embstream_changelog_lag_records gauge",
        *(
            []
            if status["changelog_lag"] is None
            else [f"embstream_changelog_lag_records {status['changelog_lag']}"]
        ),
        "# HELP embstream_changelog_truncated_partitions Changelog partitions whose retained log "
        "starts after what this store had read (seed the worker from a backup).",
        "# TYPE embstream_changelog_truncated_partitions gauge",
        f"embstream_changelog_truncated_partitions {status['changelog_truncated']}",
        "# HELP embstream_changelog_diverged_partitions Changelog partitions where this replica "
        "missed a batch (seed the worker from a backup).",
        "# TYPE embstream_changelog_diverged_partitions gauge",
        f"embstream_changelog_diverged_partitions {status['changelog_diverged']}",
        "# HELP embstream_replica_ready 1 once this worker has applied every other worker's "
        "changelog up to its end since start.",
        "# TYPE embstream_replica_ready gauge",
        f"embstream_replica_ready {int(status['ready'])}",
        "# HELP embstream_changelog_batches_applied_total Batches of other workers applied here.",
        "# TYPE embstream_changelog_batches_applied_total counter",
        f"embstream_changelog_batches_applied_total {status['changelog_batches_applied']}",
        "# HELP embstream_changelog_skipped_total Changelog records left out, by reason "
        "(fenced, gap, malformed).",
        "# TYPE embstream_changelog_skipped_total counter",
        *(
            f'embstream_changelog_skipped_total{{reason="{reason}"}} {count}'
            for reason, count in sorted(status["changelog_skipped"].items())
        ),
        "# HELP embstream_batches_fenced_total Batches dropped because the group had moved "
        "their partitions to another worker.",
        "# TYPE embstream_batches_fenced_total counter",
        f"embstream_batches_fenced_total {status['batches_fenced']}",
    ]
