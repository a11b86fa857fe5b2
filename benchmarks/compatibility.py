"""Backward compatibility of every aligner method over several version updates.

Synthetic interactions with planted clusters and taste drift between periods; version v is
trained on the first v+1 periods and evaluated on the next. For each method, the averages
over the updates of the intended-task change (new vs the same model without alignment) and
of the consumer-task change (new carried back vs the parent's native vectors), as in the
BC-Aligner paper's table, and of the forward transform (parent space into the new one, as in
FCT): the share of the parent-to-new recall gain that new users against carried-forward
parent items keep, and in how many updates that beats the parent's own recall. Writes JSON
to stdout (and to --out), then a Markdown table.

    python -m benchmarks.compatibility --out benchmarks/results/compatibility.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import emit_results
from models.encoder import EncoderConfig
from models.registry import EncoderRegistry
from models.synthetic import SyntheticWorld
from models.versioning import VersionRequest, train_version

SETUPS = {
    "BC-Aligner (joint, multi-step, warm start)": {"method": "bc-aligner"},
    "the same with the cross-version task term (weight 3)": {
        "method": "bc-aligner",
        "cross_task_weight": 3.0,
    },
    "BC-Aligner (joint, multi-step, fresh init)": {"method": "bc-aligner", "warm_start": False},
    "joint, single-step, warm start": {"method": "bc-aligner", "multi_step": False},
    "post-hoc linear (least squares)": {"method": "posthoc-linear"},
    "post-hoc orthogonal (Procrustes)": {"method": "procrustes"},
    "none (new model, no alignment)": {"method": "none"},
}
SMALL = EncoderConfig(dim=32, id_dim=16, buckets=4096, hidden=64, history=20)


def run(periods: int, events_per_period: int, seed: int) -> dict[str, Any]:
    world = SyntheticWorld(users=400, items=600, clusters=8, seed=seed)
    log = world.drifting_log(periods, events_per_period, 0.15, 1_700_000_000_000, 86_400_000)
    results: dict[str, Any] = {}
    for name, options in SETUPS.items():
        registry = EncoderRegistry(tempfile.mkdtemp(prefix="embstream-compat-"))
        started = time.perf_counter()
        reports = []
        for version in range(1, periods):
            request = VersionRequest(epochs=3, seed=seed + version, encoder=SMALL, **options)  # type: ignore[arg-type]
            _, report = train_version(registry, log[: (version + 1) * events_per_period], request)
            reports.append(report)
        updates = reports[1:]
        consumer = [r["consumer_change_pct"]["mean"] for r in updates]
        forwards = [r["forward"] for r in updates]
        kept = [f["gain_kept"] for f in forwards if f["gain_kept"] is not None]
        results[name] = {
            "intended_change_pct": round(float(np.mean([r["intended_change_pct"] for r in updates])), 2),
            "consumer_change_pct": round(
                float(np.mean([c if c is not None else -100.0 for c in consumer])), 2
            ),
            "per_update": [
                {
                    "version": r["version"],
                    "intended": r["intended_change_pct"],
                    "consumer": r["consumer_change_pct"],
                    "ecc": r["ecc"],
                    "swappable": r["swappable"],
                    "forward": r["forward"],
                }
                for r in updates
            ],
            "forward_gain_kept": round(float(np.mean(kept)), 4) if kept else None,
            "forward_ecc_updates": f"{sum(f['ecc'] for f in forwards)}/{len(forwards)}",
            "compatibility_matrix": updates[-1]["compatibility_matrix"],
            "seconds": round(time.perf_counter() - started, 1),
        }
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| method | intended task vs no alignment | consumer tasks vs parent | AC | AM "
        "| forward: ECC met | forward: gain kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        matrix = row["compatibility_matrix"]
        lines.append(
            f"| {name} | {row['intended_change_pct']:+.2f} % | {row['consumer_change_pct']:+.2f} % "
            f"| {matrix['ac']} | {matrix['am']} | {row['forward_ecc_updates']} "
            f"| {'-' if row['forward_gain_kept'] is None else format(row['forward_gain_kept'], '.0%')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--periods", type=int, default=6, help="periods (versions = periods - 1)")
    parser.add_argument("--events-per-period", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = run(args.periods, args.events_per_period, args.seed)
    emit_results(results, args.out)
    print(table(results))


if __name__ == "__main__":
    main()
