"""Time from stage to promote, with and without a forward transform, in one run.

A store is filled by running synthetic events through the refresher (no broker) until it
holds about ``--users`` users and ``--items`` items at version 1, with version 1's item
index built. Version 2 is then staged on two copies of that store through the worker's own
:class:`~stream.rollout.controller.RolloutController` (chunks of the worker's size, torch on
one thread, the item indexes' threads running as in a worker):

- **forward**: the forward fill, then the wait for version 2's item index; promotable once
  both are done (what ``swap promote`` waits for). The native backfill that follows is timed
  too (the time until every entity is native again).
- **native** (``swap stage --no-forward``): the whole native backfill, then the index.

It prints the forward fill's rate (entities/s), the time from stage to promotable in both
cases, and their ratio, as JSON (``--out`` also writes it). The native backfill's cost is
the encoder's: ``--hidden`` lists the hidden widths of version 2's towers to run (the
default encoder has 128; a width of 0 stages a copy of version 1, the default encoder).

    python -m benchmarks.instant_promote [--users 200000] [--items 50000] [--hidden 0,1024]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.storage import _event_records
from models.aligners import fit_forward
from models.bootstrap import ensure_default_encoder
from models.encoder import TwoTowerModel
from models.registry import EncoderRegistry
from models.synthetic import SyntheticWorld
from store.item_index import IndexTuning
from store.item_indexes import ItemIndexes
from store.vector_store import VersionedVectorStore
from stream.ingest.refresher import EmbeddingRefresher
from stream.rollout.controller import RolloutController
from stream.rollout.messages import control_message
from stream.rollout.plane import BACKFILL_CHUNK

__all__ = ["main", "run"]


def _fill(path: Path, registry: EncoderRegistry, users: int, items: int) -> dict[str, Any]:
    """Events through the refresher until the store holds about ``users`` and ``items``."""
    store = VersionedVectorStore(path)
    world = SyntheticWorld(users=users, items=items, seed=0)
    refresher = EmbeddingRefresher(store, registry.load(1), updates_topic="updates", dlq_topic="dlq")
    started = time.perf_counter()
    events = 4 * (users + items)
    for batch in _event_records(world, events, int(time.time() * 1000)):
        refresher.process(batch)
    filled = {
        "events": events,
        "seconds": round(time.perf_counter() - started, 1),
        "users": store.count_states("user"),
        "items": store.count_states("item"),
    }
    store.close()
    return filled


def _second_version(registry: EncoderRegistry, hidden: int) -> int:
    """A child of version 1: version 1's weights (``hidden`` 0), or towers ``hidden`` wide
    (random weights: the cost does not depend on them), with a forward transform fitted on
    random pairs and a report whose forward ECC holds. Returns its version."""
    rng = np.random.default_rng(0)
    parent = rng.standard_normal((4_096, 64)).astype(np.float32)
    forward = fit_forward(parent, parent @ rng.standard_normal((64, 64)).astype(np.float32))
    report = {"swappable": True, "forward": {"ecc": True}, "note": "benchmark copy of version 1"}
    if hidden:
        torch.manual_seed(0)
        model = TwoTowerModel(replace(registry.manifest(1).architecture, hidden=hidden))
    else:
        model = registry.load(1).model
    return registry.save(
        model,
        parent=1,
        forward=forward,
        files={"report.json": json.dumps(report).encode()},
    ).version


def _wait(condition: Any, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(0.05)


def _stage_to_promote(path: Path, registry: EncoderRegistry, version: int, forward: bool) -> dict[str, Any]:
    store = VersionedVectorStore(path)
    indexes = ItemIndexes(store, dim_of=lambda version: 64, tuning=IndexTuning())
    try:
        indexes.track(serving=1)
        indexes.start()
        _wait(lambda: (status := indexes.status().get(1)) is not None and status.ready)
        controller = RolloutController(registry, store, "bench", indexes=indexes)
        controller.start(1)
        started = time.perf_counter()
        controller.apply(control_message("stage", version=version, forward=forward))
        indexes.track(serving=1, staged=version)
        result: dict[str, Any] = {}
        if controller.forward is not None:
            while not controller.forward.complete:
                controller.forward.step(BACKFILL_CHUNK)
            seconds = time.perf_counter() - started
            entities = controller.forward.progress().total
            result["forward_fill"] = {
                "entities": entities,
                "seconds": round(seconds, 2),
                "entities_per_second": round(entities / seconds),
            }
            needed = ("forward", "index")
        else:
            needed = ("user", "item", "index")
        backfiller = controller.backfiller
        assert backfiller is not None

        def promotable() -> bool:
            progress = controller.progress()
            return all(progress[kind].complete for kind in needed)

        if controller.forward is None:
            while not backfiller.complete:
                backfiller.step(BACKFILL_CHUNK)
            seconds = time.perf_counter() - started
            entities = sum(p.total for p in backfiller.progress().values())
            result["native_backfill"] = {
                "entities": entities,
                "seconds": round(seconds, 2),
                "entities_per_second": round(entities / seconds),
            }
        while not promotable():
            time.sleep(0.05)
        result["stage_to_promotable_seconds"] = round(time.perf_counter() - started, 2)
        if controller.forward is not None:  # the native backfill that replaces forward entries
            while not backfiller.complete:
                backfiller.step(BACKFILL_CHUNK)
            result["stage_to_all_native_seconds"] = round(time.perf_counter() - started, 2)
        return result
    finally:
        indexes.stop()
        store.close()


def run(work_dir: Path, users: int, items: int, widths: list[int]) -> dict[str, Any]:
    torch.set_num_threads(1)
    registry = EncoderRegistry(work_dir / "registry")
    ensure_default_encoder(registry)
    filled = work_dir / "filled"
    results: dict[str, Any] = {"fill": _fill(filled, registry, users, items)}
    for hidden in widths:
        version = _second_version(registry, hidden)
        runs: dict[str, Any] = {}
        for name, forward in (("with_forward", True), ("native_only", False)):
            copy = work_dir / name
            shutil.copytree(filled, copy)
            runs[name] = _stage_to_promote(copy, registry, version, forward)
            shutil.rmtree(copy)
        native, early = (
            runs[name]["stage_to_promotable_seconds"] for name in ("native_only", "with_forward")
        )
        runs["promote_sooner_ratio"] = round(native / early, 1)
        results[f"hidden_{hidden or 'copy_of_v1'}"] = runs
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--hidden", default="0,1024", help="comma-separated tower widths of version 2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embstream-instant-promote-") as work:
        widths = [int(width) for width in args.hidden.split(",")]
        results = run(Path(work), args.users, args.items, widths)
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
