"""Training a new encoder version end to end: model, backward aligner, compatibility report,
all stored together in the registry."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from models.aligners import (
    ALIGNER_METHODS,
    BackwardAligner,
    fit_forward,
    fit_least_squares,
    fit_procrustes,
    forward_apply,
)
from models.baselines import Baseline, baseline_views
from models.compatibility import (
    VersionView,
    compatibility_matrix,
    consumer_changes,
    cross_ranking,
    cross_recall,
    embed_version,
)
from models.encoder import Encoder, EncoderConfig, TorchEncoder
from models.errors import IncompatibleVersionsError, TrainingError
from models.evaluation import NextItems, rank_next_items
from models.registry import EncoderRegistry, Manifest
from models.report_plot import render_report_png
from models.training import (
    AlignmentTargets,
    Examples,
    TrainingConfig,
    TrainingProgress,
    build_examples,
    train_two_tower,
)

__all__ = [
    "DEFAULT_CROSS_TASK_WEIGHT",
    "DEFAULT_GATE_PCT",
    "VersionRequest",
    "build_report",
    "report_files",
    "train_version",
]

DEFAULT_GATE_PCT = -2.0
#: The cross-version task term's weight: off unless asked for. On real ratings
#: (``python -m benchmarks.real_data --cross-task-weight 3``) it brings AC to 1.0 after each
#: update where the alignment term alone gives 1.0 / 0.67 / 0.5 (seed 0), but on synthetic
#: logs it costs the intended task and consumers (``BENCHMARKS.md``): a trade to measure per
#: data set, not a default.
DEFAULT_CROSS_TASK_WEIGHT = 0.0


@dataclass(frozen=True)
class VersionRequest:
    """What ``embstream train`` asks for."""

    method: str = "bc-aligner"
    parent: int | None = None  # None: the registry's latest version
    dim: int | None = None  # None: the parent's dim (64 for a first version)
    epochs: int = 3
    seed: int = 0
    alignment_weight: float = 8.0
    multi_step: bool = True
    warm_start: bool = True  # bc-aligner: start from the parent's weights when shapes match
    gate_pct: float = DEFAULT_GATE_PCT
    recall_k: int = 10
    batch_size: int = 512
    learning_rate: float = 3e-3
    encoder: EncoderConfig | None = None  # architecture override (dim still from ``dim``)
    forward: bool = True  # fit the forward transform from the parent's space (FCT direction)
    validation_fraction: float = 0.1  # the log's last share: the next period, for the report
    # bc-aligner: weight of the cross-version task term (carried-back users must retrieve
    # among the ancestors' item vectors; models.training.cross_task_loss)
    cross_task_weight: float = DEFAULT_CROSS_TASK_WEIGHT
    # The item tower reads the items' tags; None: as the parent (a first version: as ``encoder``)
    item_tags: bool | None = None
    # EncoderConfig.user_id_dropout; None: as the parent (a first version: as ``encoder``)
    user_id_dropout: float | None = None
    logq_weight: float = 1.0  # TrainingConfig.logq_weight, for the encoder and the baselines


def _alignment_targets(
    registry: EncoderRegistry, lineage: list[int], examples: Examples, request: VersionRequest
) -> AlignmentTargets:
    """Frozen ancestors' embeddings of every training example, and their aligner chain."""
    targets = AlignmentTargets([], [], [], request.alignment_weight, request.multi_step)
    targets.cross_task_weight = request.cross_task_weight
    targets.entity_users = list(examples.users_at_cut.values())
    targets.entity_items = list(examples.items_at_cut.values())
    train_users, train_items = examples.users[: examples.split], examples.items[: examples.split]
    for position, version in enumerate(lineage):
        encoder = registry.load(version)
        targets.user_targets.append(torch.from_numpy(encoder.encode_users(train_users)))
        targets.item_targets.append(torch.from_numpy(encoder.encode_items(train_items)))
        targets.entity_user_targets.append(torch.from_numpy(encoder.encode_users(targets.entity_users)))
        targets.entity_item_targets.append(torch.from_numpy(encoder.encode_items(targets.entity_items)))
        if not request.multi_step or position == len(lineage) - 1:
            break
        aligner = registry.load_aligner(version)
        if aligner is None:  # the chain stops here: older versions are out of reach anyway
            break
        targets.chain.append(aligner)
    return targets


def _fit_posthoc(method: str, new: VersionView, parent: VersionView) -> BackwardAligner:
    source = np.concatenate([new.users, new.items])
    target = np.concatenate([parent.users, parent.items])
    return fit_least_squares(source, target) if method == "posthoc-linear" else fit_procrustes(source, target)


def _pct(new: float, base: float) -> float:
    return round((new - base) / base * 100.0, 3) if base else 0.0


def build_report(
    registry: EncoderRegistry,
    version: int,
    parent: int | None,
    method: str,
    new: Encoder,
    aligner: BackwardAligner | None,
    unaligned: Encoder,
    examples: Examples,
    request: VersionRequest,
    forward: BackwardAligner | None = None,
) -> dict[str, Any]:
    k = request.recall_k
    new_view = embed_version(new, examples)
    unaligned_view = new_view if unaligned is new else embed_version(unaligned, examples)
    ranked = {
        "new": cross_ranking(new_view, new_view, examples, k),
        "unaligned": cross_ranking(unaligned_view, unaligned_view, examples, k),
    }
    report: dict[str, Any] = {
        "version": version,
        "parent": parent,
        "method": method,
        "recall_k": k,
        "threshold_pct": request.gate_pct,
        "recall": {name: round(ranking.recall, 4) for name, ranking in ranked.items()},
        "ndcg": {name: round(ranking.ndcg, 4) for name, ranking in ranked.items()},
        "intended_change_pct": _pct(ranked["new"].recall, ranked["unaligned"].recall),
    }
    baselines = baseline_views(examples, new_view.users.shape[1], _training(request))
    report["baselines"] = _scores(baselines, examples.next_items(), k)
    views_now: dict[str, VersionView | Baseline] = {"new": new_view, "unaligned": unaligned_view}
    report["cold_items"] = _cold_items(examples, {**views_now, **baselines}, k)
    views = {version: new_view}
    chains: dict[tuple[int, int], list[BackwardAligner] | None] = {(version, version): []}
    for old in registry.versions():
        views[old] = embed_version(registry.load(old), examples)
        for older in registry.versions():
            try:
                chains[(old, older)] = registry.aligner_chain(old, older)
            except IncompatibleVersionsError:
                chains[(old, older)] = None
    if parent is not None:
        for ancestor in registry.lineage(parent):
            tail = chains.get((parent, ancestor))
            chains[(version, ancestor)] = None if aligner is None or tail is None else [aligner, *tail]
        parent_view = views[parent]
        parent_ranking = cross_ranking(parent_view, parent_view, examples, k)
        report["recall"]["parent"] = round(parent_ranking.recall, 4)
        report["ndcg"]["parent"] = round(parent_ranking.ndcg, 4)
        carried = None
        if aligner is not None:
            carried = new_view.carried([aligner])
        elif new_view.users.shape[1] == parent_view.users.shape[1]:
            carried = new_view  # no aligner: consumers would get the new space as it is
        consumer = consumer_changes(parent_view, carried, examples, request.seed)
        report["consumer_change_pct"] = consumer["change_pct"]
        report["consumer_tasks"] = consumer["tasks"]
        ecc, cross = {}, {}
        for ancestor in registry.lineage(parent):
            chain = chains[(version, ancestor)]
            base = cross_recall(views[ancestor], views[ancestor], examples, k)
            if chain is None:
                ecc[str(ancestor)] = False
                continue
            value = cross_recall(new_view.carried(chain), views[ancestor], examples, k)
            cross[str(ancestor)] = {"carried_new": round(value, 4), "native_old": round(base, 4)}
            ecc[str(ancestor)] = value > base
        report["cross_version_recall"] = cross
        report["ecc"] = ecc
        if forward is not None:
            report["forward"] = _forward_report(forward, new_view, parent_view, examples, k)
        mean = report["consumer_change_pct"]["mean"]
        report["swappable"] = aligner is not None and mean is not None and mean >= request.gate_pct
    else:
        report.update(consumer_change_pct={"mean": None}, ecc={}, swappable=True)
    report["compatibility_matrix"] = compatibility_matrix(views, chains, examples, k)
    return report


def _cold_items(examples: Examples, views: Mapping[str, VersionView | Baseline], k: int) -> dict[str, Any]:
    """Recall@K of the queries whose next item is new to the training period, among every
    item (``recall``) and among the new items only (``recall_among_cold``, the cold-start
    protocol: what content such as tags can tell apart)."""
    queries = examples.cold_item_queries()
    report: dict[str, Any] = {
        "queries": len(queries),
        "share": round(len(queries) / max(1, len(examples.users) - examples.split), 4),
        "recall": {},
        "recall_among_cold": {},
    }
    if not len(queries):
        return report
    truth = examples.next_items().subset(queries)
    cold = examples.cold_items()
    among = truth.within(cold)
    for name, view in views.items():
        asked = view.queries[queries]
        report["recall"][name] = round(rank_next_items(asked, view.catalogue, truth, k).recall, 4)
        report["recall_among_cold"][name] = round(
            rank_next_items(asked, view.catalogue[cold], among, k).recall, 4
        )
    return report


def _training(request: VersionRequest) -> TrainingConfig:
    """The baselines' training: the encoder's epochs, batch, learning rate and seed."""
    return TrainingConfig(
        epochs=request.epochs,
        batch_size=request.batch_size,
        learning_rate=request.learning_rate,
        seed=request.seed,
        logq_weight=request.logq_weight,
    )


def _scores(
    views: Mapping[str, VersionView | Baseline], truth: NextItems, k: int
) -> dict[str, dict[str, float]]:
    """Recall@K and NDCG@K of each view's queries against its catalogue."""
    scores = {}
    for name, view in views.items():
        ranking = rank_next_items(view.queries, view.catalogue, truth, k)
        scores[name] = {"recall": round(ranking.recall, 4), "ndcg": round(ranking.ndcg, 4)}
    return scores


def report_files(report: dict[str, Any]) -> dict[str, bytes]:
    """A version's ``report.json`` and its picture, ``report.png``."""
    return {
        "report.json": (json.dumps(report, indent=2) + "\n").encode(),
        "report.png": render_report_png(report),
    }


def _forward_report(
    forward: BackwardAligner, new: VersionView, parent: VersionView, examples: Examples, k: int
) -> dict[str, Any]:
    """How well the parent's vectors carried forward serve next to the new version's, as FCT
    measures it: new users against forward-carried parent items (what an instant promote
    serves before the native backfill), and forward-carried parent users against new items."""
    truth = examples.next_items()
    new_new = rank_next_items(new.queries, new.catalogue, truth, k).recall
    parent_parent = rank_next_items(parent.queries, parent.catalogue, truth, k).recall
    new_forward = rank_next_items(new.queries, forward_apply(forward, parent.catalogue), truth, k).recall
    forward_new = rank_next_items(forward_apply(forward, parent.queries), new.catalogue, truth, k).recall
    gain = new_new - parent_parent
    return {
        "method": "least-squares",
        "recall": {
            "new_new": round(new_new, 4),
            "parent_parent": round(parent_parent, 4),
            "new_vs_forward_parent_items": round(new_forward, 4),
            "forward_parent_users_vs_new": round(forward_new, 4),
        },
        # Of the parent-to-new gain, the share an instant promote keeps (None: no gain).
        "gain_kept": None if gain <= 0 else round((new_forward - parent_parent) / gain, 4),
        "ecc": new_forward > parent_parent,
    }


def train_version(
    registry: EncoderRegistry,
    events: list[dict[str, Any]],
    request: VersionRequest,
    progress: Callable[[str, TrainingProgress], None] | None = None,
) -> tuple[Manifest, dict[str, Any]]:
    """Train, align, evaluate and store a new version; returns its manifest and report."""
    if request.method not in ALIGNER_METHODS:
        raise TrainingError(f"unknown method {request.method!r}; choose from {', '.join(ALIGNER_METHODS)}")
    parent = request.parent if request.parent is not None else registry.latest()
    lineage = registry.lineage(parent) if parent is not None else []
    parent_manifest = registry.manifest(parent) if parent is not None else None
    dim = request.dim or (parent_manifest.dim if parent_manifest is not None else 64)
    config = replace(request.encoder or EncoderConfig(), dim=dim)
    if request.item_tags is not None:
        config = replace(config, item_tags=request.item_tags)
    elif parent_manifest is not None:
        config = replace(config, item_tags=parent_manifest.inputs.item_tags > 0)
    if request.user_id_dropout is not None:
        config = replace(config, user_id_dropout=request.user_id_dropout)
    elif parent_manifest is not None and parent_manifest.architecture is not None:
        config = replace(config, user_id_dropout=parent_manifest.architecture.user_id_dropout)
    if not 0.0 <= config.user_id_dropout < 1.0:
        raise TrainingError(f"user_id_dropout is a share in [0, 1), got {config.user_id_dropout}")
    training = TrainingConfig(
        epochs=request.epochs,
        batch_size=request.batch_size,
        learning_rate=request.learning_rate,
        recall_k=request.recall_k,
        seed=request.seed,
        validation_fraction=request.validation_fraction,
        logq_weight=request.logq_weight,
    )
    examples = build_examples(events, config.history, training.validation_fraction)

    def stage(name: str) -> Callable[[TrainingProgress], None] | None:
        return None if progress is None else (lambda event: progress(name, event))

    method = request.method if parent is not None else "none"
    unaligned = train_two_tower(examples, config, training, stage("model"))
    model, aligner, metrics = unaligned.model, None, unaligned.metrics
    if method == "bc-aligner":
        targets = _alignment_targets(registry, lineage, examples, request)
        parent_encoder = registry.load(lineage[0]) if request.warm_start else None
        # Warm start needs the parent's own weights: an imported parent has none to offer.
        parent_model = parent_encoder.model if isinstance(parent_encoder, TorchEncoder) else None
        joint = train_two_tower(
            examples, config, training, stage("bc-aligner"), alignment=targets, warm_start=parent_model
        )
        model, aligner, metrics = joint.model, joint.aligner, joint.metrics
    elif method in ("posthoc-linear", "procrustes"):
        assert parent is not None
        aligner = _fit_posthoc(
            method,
            embed_version(TorchEncoder(model, 0), examples),
            embed_version(registry.load(parent), examples),
        )
    forward = None
    if request.forward and parent is not None:
        new_view = embed_version(TorchEncoder(model, 0), examples)
        parent_view = embed_version(registry.load(parent), examples)
        forward = fit_forward(
            np.concatenate([parent_view.users, parent_view.items]),
            np.concatenate([new_view.users, new_view.items]),
        )
    version = (registry.latest() or 0) + 1
    report = build_report(
        registry,
        version,
        parent,
        method,
        TorchEncoder(model, version),
        aligner,
        TorchEncoder(unaligned.model, version),
        examples,
        request,
        forward,
    )
    files = report_files(report)
    info = {
        **metrics,
        "method": method,
        "events": len(events),
        "alignment_weight": request.alignment_weight,
        "cross_task_weight": request.cross_task_weight if method == "bc-aligner" else None,
        "logq_weight": request.logq_weight,
    }
    manifest = registry.save(
        model,
        parent=parent,
        training=info,
        aligner=aligner,
        aligner_method=method,
        files=files,
        forward=forward,
    )
    return manifest, report
