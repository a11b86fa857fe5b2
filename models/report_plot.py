"""The compatibility report's picture: the compatibility matrix as a heat map, the
consumer-task changes, and the intended task's Recall@K next to the baselines'."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["render_report_png"]


def render_report_png(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = report["compatibility_matrix"]
    versions = matrix["versions"]
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix["recall"]], dtype=float)
    figure, (heat, bars, ranks) = plt.subplots(
        1, 3, figsize=(16, 4.5), gridspec_kw={"width_ratios": [1.1, 1, 0.8]}
    )
    image = heat.imshow(values, cmap="viridis", vmin=0.0, vmax=max(0.01, float(np.nanmax(values))))
    heat.set_xticks(range(len(versions)), [f"v{v}" for v in versions])
    heat.set_yticks(range(len(versions)), [f"v{v}" for v in versions])
    heat.set_xlabel("gallery (item) version")
    heat.set_ylabel("query (user) version, carried back")
    k = report["recall_k"]
    heat.set_title(f"Recall@{k}  AC={matrix['ac']}  AM={matrix['am']}")
    for (row, col), value in np.ndenumerate(values):
        if not np.isnan(value):
            heat.text(col, row, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
    figure.colorbar(image, ax=heat, fraction=0.046)
    changes = {name: pct for name, pct in report["consumer_change_pct"].items() if pct is not None}
    names = list(changes)
    colours = ["tab:green" if changes[n] >= report["threshold_pct"] else "tab:red" for n in names]
    bars.barh(names, [changes[n] for n in names], color=colours)
    bars.axvline(report["threshold_pct"], color="black", linestyle="--", linewidth=1, label="gate")
    bars.axvline(0, color="grey", linewidth=0.8)
    bars.set_xlabel(f"consumer-task change vs v{report['parent']} (%)")
    verdict = "swappable" if report["swappable"] else "NOT swappable"
    bars.set_title(f"v{report['version']} ({report['method']}): {verdict}")
    bars.legend(loc="lower right")
    recalls = dict(report["recall"])
    recalls.update({name: scores["recall"] for name, scores in report.get("baselines", {}).items()})
    baseline_names = set(report.get("baselines", {}))
    ranks.barh(
        list(recalls),
        list(recalls.values()),
        color=["tab:grey" if name in baseline_names else "tab:blue" for name in recalls],
    )
    for row, value in enumerate(recalls.values()):
        ranks.text(value, row, f" {value:.3f}", va="center", fontsize=8)
    ranks.set_xlim(0, 1.25 * max([0.01, *recalls.values()]))  # room for the labels
    ranks.set_xlabel(f"Recall@{k}, next period (grey: baselines)")
    ranks.set_title("intended task")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
