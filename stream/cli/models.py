"""``embstream train`` and ``embstream models``: new encoder versions (trained here, or a
team's own towers imported) and the registry."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from models.aligners import ALIGNER_METHODS
from models.contract import InputContract
from models.errors import IntegrityError
from models.features import MAX_ITEM_TAGS
from models.importing import IMPORT_METHODS, EntityStates, ImportRequest, import_version
from models.interaction_log import read_interaction_log
from models.manifest import Manifest
from models.registry import EncoderRegistry, version_number
from models.training import TrainingProgress
from models.versioning import DEFAULT_CROSS_TASK_WEIGHT, DEFAULT_GATE_PCT, VersionRequest, train_version
from store.options import StoreOptions
from store.vector_store import VersionedVectorStore
from stream.console import progress_bar
from stream.settings import Settings

__all__ = ["add_model_commands", "run_models", "run_train"]


def add_model_commands(commands: Any) -> None:
    train = commands.add_parser("train", help="train a new encoder version with its backward aligner")
    train.add_argument("--events", required=True, type=Path, help="JSON lines or CSV interaction log")
    train.add_argument("--registry", type=Path, help="model registry (default: embstream-registry)")
    train.add_argument("--parent", type=version_number, help="parent version (default: the latest)")
    train.add_argument("--dim", type=int, help="embedding dimensions (default: the parent's, or 64)")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--method", choices=ALIGNER_METHODS, default="bc-aligner")
    train.add_argument(
        "--alignment-weight", type=float, default=8.0, help="bc-aligner's weight of the alignment term"
    )
    train.add_argument(
        "--cross-task-weight",
        type=float,
        default=DEFAULT_CROSS_TASK_WEIGHT,
        help="bc-aligner's weight of the cross-version task term (0: the alignment term alone)",
    )
    train.add_argument(
        "--item-tags",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the item tower reads the items' tags (item_tags of the events; default: as the parent, "
        "off for a first version)",
    )
    train.add_argument(
        "--user-id-dropout",
        type=float,
        help="share of training examples that hide the user id, so new users are placed by their "
        "history (default: as the parent, 0 for a first version)",
    )
    train.add_argument(
        "--logq-weight",
        type=float,
        default=1.0,
        help="weight of the logQ correction (1: exact; above 1 tilts scores towards popular items)",
    )
    train.add_argument("--single-step", action="store_true", help="bc-aligner: parent term only")
    train.add_argument(
        "--no-warm-start", action="store_true", help="bc-aligner: start from random weights, not the parent's"
    )
    train.add_argument(
        "--no-forward",
        action="store_true",
        help="skip the forward transform from the parent's space (promote then waits for the backfill)",
    )
    train.add_argument(
        "--gate-pct",
        type=float,
        default=DEFAULT_GATE_PCT,
        help="consumer change below this (percent) marks the version not swappable",
    )

    models = commands.add_parser("models", help="list, show, verify or delete registry versions")
    models.add_argument("--registry", type=Path, help="model registry (default: embstream-registry)")
    action = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = action.add_parser("list", help="every version, a line each")
    listing.add_argument("--registry", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for name, text in (
        ("show", "manifest and report summary"),
        ("verify", "re-check sha256 hashes"),
        ("delete", "remove a version"),
    ):
        sub = action.add_parser(name, help=text)
        sub.add_argument("version", type=version_number)
        sub.add_argument("--registry", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == "delete":
            sub.add_argument("--force", action="store_true", help="even if other versions descend from it")
    _add_import(action)


def _add_import(action: Any) -> None:
    defaults = InputContract()
    sub = action.add_parser(
        "import",
        help="import a team's own towers (saved by torch.export) as a version",
        description="Check two exported towers against the input contract, give them a backward "
        "aligner and a forward transform, compute the compatibility report and store them as "
        "the next version. Nothing is written when anything is refused.",
    )
    sub.add_argument("--user-tower", required=True, type=Path, help="user tower, a torch.export.save file")
    sub.add_argument("--item-tower", required=True, type=Path, help="item tower, a torch.export.save file")
    sub.add_argument("--parent", type=version_number, help="parent version (default: the latest)")
    sub.add_argument(
        "--method",
        choices=IMPORT_METHODS,
        default="procrustes",
        help="how the backward aligner is fitted when --aligner is not given (default: procrustes)",
    )
    sub.add_argument("--aligner", type=Path, help="a backward aligner to use as it is (a plain tensor file)")
    sub.add_argument(
        "--events",
        type=Path,
        help="JSON lines or CSV interaction log to fit and evaluate on (default: the store's entities)",
    )
    sub.add_argument("--registry", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub.add_argument(
        "--data-dir", type=Path, help="the store read without --events (default: EMBSTREAM_DATA_DIR)"
    )
    sub.add_argument("--history", type=int, default=defaults.history, help="input contract: history length L")
    sub.add_argument("--buckets", type=int, default=defaults.buckets, help="input contract: hash buckets")
    sub.add_argument(
        "--recency-tau-s",
        type=float,
        default=defaults.recency_tau_seconds,
        help="input contract: recency time constant of history weights, in seconds",
    )
    sub.add_argument(
        "--item-tags",
        type=int,
        default=0,
        help=f"input contract: tag slots T the item tower reads (0 to {MAX_ITEM_TAGS}; 0: no tags)",
    )
    sub.add_argument("--no-forward", action="store_true", help="skip the forward transform")
    sub.add_argument(
        "--gate-pct",
        type=float,
        default=DEFAULT_GATE_PCT,
        help="consumer change below this (percent) marks the version not swappable",
    )


def _registry(args: argparse.Namespace) -> EncoderRegistry:
    return EncoderRegistry(args.registry or Settings.from_env().registry)


def run_train(args: argparse.Namespace) -> int:
    registry = _registry(args)
    log = read_interaction_log(args.events)
    if log.skipped:
        print(
            f"embstream: skipped {sum(log.skipped.values()):,} unusable rows: {dict(log.skipped)}",
            file=sys.stderr,
        )
    print(f"embstream: {len(log.events):,} events from {args.events}", file=sys.stderr)
    request = VersionRequest(
        method=args.method,
        parent=args.parent,
        dim=args.dim,
        epochs=args.epochs,
        seed=args.seed,
        alignment_weight=args.alignment_weight,
        cross_task_weight=args.cross_task_weight,
        item_tags=args.item_tags,
        user_id_dropout=args.user_id_dropout,
        logq_weight=args.logq_weight,
        multi_step=not args.single_step,
        warm_start=not args.no_warm_start,
        gate_pct=args.gate_pct,
        forward=not args.no_forward,
    )
    bars: dict[str, Any] = {}

    def report(stage: str, event: TrainingProgress) -> None:
        if stage not in bars:
            bars[stage] = progress_bar(total=event.steps, desc=f"training ({stage})", unit="step")
        bars[stage].report(event)
        if event.validation_recall is not None and not sys.stderr.isatty():
            print(
                f"embstream: {stage} step {event.step}/{event.steps} loss {event.loss:.3f} "
                f"validation recall {event.validation_recall:.4f}",
                file=sys.stderr,
            )

    try:
        manifest, result = train_version(registry, log.events, request, progress=report)
    finally:
        for bar in bars.values():
            bar.close()
    _print_summary(registry, manifest, result)
    return 0


def _print_summary(registry: EncoderRegistry, manifest: Manifest, report: dict[str, Any]) -> None:
    """The JSON summary ``train`` and ``models import`` print."""
    summary = {
        "version": manifest.version,
        "parent": manifest.parent,
        "method": report["method"],
        "recall": report["recall"],
        "baselines": report.get("baselines"),
        "intended_change_pct": report["intended_change_pct"],
        "consumer_change_pct": report["consumer_change_pct"],
        "ecc": report["ecc"],
        "forward": report.get("forward"),
        "swappable": report["swappable"],
        "report": str(registry.path_of(manifest.version) / "report.json"),
    }
    print(json.dumps(summary, indent=2))


#: Entities of each kind read from a store to fit on (evenly spread over its key order).
STORE_SAMPLE = 50_000


def _sample(store: VersionedVectorStore, kind: str, limit: int) -> list[tuple[str, bytes]]:
    stride = max(1, -(-store.count_states(kind) // limit))
    return [entry for row, entry in enumerate(store.iter_states(kind)) if row % stride == 0][:limit]


def _store_states(data_dir: Path, user_window: int) -> EntityStates:
    """Up to :data:`STORE_SAMPLE` users and items of the store at ``data_dir``, read through
    a read-only handle (a worker may be running on it)."""
    store = VersionedVectorStore(data_dir, StoreOptions(block_cache_mb=0), read_only=True)
    try:
        return EntityStates(
            _sample(store, "user", STORE_SAMPLE), _sample(store, "item", STORE_SAMPLE), user_window
        )
    finally:
        store.close()


def run_import(args: argparse.Namespace) -> int:
    registry = _registry(args)
    settings = Settings.from_env()
    try:
        contract = InputContract(args.history, args.buckets, args.recency_tau_s, args.item_tags)
    except ValueError as error:
        print(f"embstream: error: {error}", file=sys.stderr)
        return 2
    request = ImportRequest(
        user_tower=args.user_tower,
        item_tower=args.item_tower,
        parent=args.parent,
        method=args.method,
        aligner=args.aligner,
        contract=contract,
        forward=not args.no_forward,
        gate_pct=args.gate_pct,
    )
    events, states = None, None
    if args.events is not None:
        log = read_interaction_log(args.events)
        events = log.events
        print(f"embstream: {len(events):,} events from {args.events}", file=sys.stderr)
    else:
        data_dir = args.data_dir or settings.data_dir
        states = _store_states(data_dir, settings.user_window)
        print(
            f"embstream: {len(states.users):,} users and {len(states.items):,} items "
            f"from the store at {data_dir}",
            file=sys.stderr,
        )
    manifest, report = import_version(
        registry, request, events, states, progress=lambda text: print(f"embstream: {text}", file=sys.stderr)
    )
    _print_summary(registry, manifest, report)
    return 0


def run_models(args: argparse.Namespace) -> int:
    if args.action == "import":
        return run_import(args)
    registry = _registry(args)
    if args.action == "list":
        versions = registry.versions()
        if not versions:
            print(f"embstream: no versions in {registry.root}", file=sys.stderr)
            return 0
        print(
            f"{'version':>7}  {'parent':>6}  {'dim':>4}  {'kind':<9} {'aligner':<15} "
            f"{'swappable':<9}  created"
        )
        for version in versions:
            manifest = registry.manifest(version)
            report = registry.report(version)
            method = (manifest.aligner or {}).get("method") or "-"
            swappable = {True: "yes", False: "no"}.get(bool(report["swappable"])) if report else "-"
            parent = "-" if manifest.parent is None else str(manifest.parent)
            kind = "imported" if manifest.architecture is None else "trained"
            columns = f"{version:>7}  {parent:>6}  {manifest.dim:>4}  {kind:<9} {method:<15} {swappable:<9}"
            print(f"{columns}  {manifest.created_at}")
        return 0
    if args.action == "show":
        manifest = registry.manifest(args.version)
        report = registry.report(args.version)
        shown: dict[str, Any] = {"manifest": manifest.to_json()}
        if report is not None:
            shown["report"] = {
                key: report.get(key)
                for key in (
                    "method",
                    "recall",
                    "intended_change_pct",
                    "consumer_change_pct",
                    "ecc",
                    "forward",
                    "swappable",
                    "compatibility_matrix",
                )
            }
        print(json.dumps(shown, indent=2))
        return 0
    if args.action == "verify":
        try:
            manifest = registry.verify(args.version)
        except IntegrityError as error:
            print(f"embstream: version {args.version} FAILED: {error}", file=sys.stderr)
            return 1
        files = [
            "weights" if manifest.architecture is not None else "towers",
            *(["aligner"] if manifest.aligner else []),
            *(["forward transform"] if manifest.forward else []),
        ]
        checked = ", ".join(files)
        print(f"embstream: version {args.version} OK ({checked} match the manifest)")
        return 0
    registry.delete(args.version, force=args.force)
    print(f"embstream: deleted version {args.version}")
    return 0
