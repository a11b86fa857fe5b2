"""A worker's side of a rollout: which encoder versions it refreshes with, and the backfill.

The :class:`RolloutController` applies control messages (:mod:`stream.rollout.messages`) in
order, through the fold of :mod:`stream.rollout.state`. It loads and checks a staged version
(sha256, compatibility gate), keeps refreshing with the serving version while also writing
the staged one (dual write), fills it (a forward fill first when the version has a usable
forward transform, then the native backfill), and switches the store's serving version on
promote and rollback. After an instant promote (forward fill done, native backfill not), the
native backfill of the new serving version goes on, across restarts, until it is complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from models.aligners import forward_apply
from models.encoder import Encoder
from models.errors import ModelError
from models.registry import EncoderRegistry, Manifest
from store.item_indexes import ItemIndexes
from store.vector_store import VersionedVectorStore
from stream.rollout.backfill import RECENCY_TIERS, Backfiller, BackfillProgress, ForwardFiller
from stream.rollout.messages import COMMANDS, ControlError, control_message
from stream.rollout.state import Folded, RolloutState, VersionCheck

__all__ = ["RolloutController", "check_swappable", "version_check"]

log = logging.getLogger("embstream.rollout")


def check_swappable(registry: EncoderRegistry, version: int, force: bool = False) -> Manifest:
    """Verify ``version``'s hashes and its compatibility gate; raise :class:`ControlError`."""
    try:
        manifest = registry.verify(version)
    except ModelError as error:
        raise ControlError(f"version {version} cannot be staged: {error}") from error
    if force:
        return manifest
    report = registry.report(version)
    if report is None:
        raise ControlError(f"version {version} has no compatibility report (use --force to stage anyway)")
    if not report.get("swappable"):
        mean = (report.get("consumer_change_pct") or {}).get("mean")
        raise ControlError(
            f"version {version} is not swappable: consumer change {mean} % is below the gate "
            f"{report.get('threshold_pct')} % or it has no aligner (use --force to stage anyway)"
        )
    return manifest


def version_check(registry: EncoderRegistry, load: Callable[[int], object]) -> VersionCheck:
    """The registry's side of the control fold (:meth:`RolloutState.fold`): a version a
    command acts on must load (``load(version)``: manifest, sha256 and a plain-tensor load),
    and a staged one must pass the compatibility gate unless forced. A failure is a refusal;
    it is never remembered, so a version added to the registry later is accepted then."""

    def check(op: str, version: int, force: bool) -> str | None:
        try:
            if op == "stage":
                check_swappable(registry, version, force=force)
            load(version)
        except (ControlError, ModelError) as error:
            return str(error)
        return None

    return check


class RolloutController:
    """Encoders and backfill of one worker, driven by control messages."""

    def __init__(
        self,
        registry: EncoderRegistry,
        store: VersionedVectorStore,
        worker_id: str,
        user_window: int = 50,
        indexes: ItemIndexes | None = None,
        retained_versions: int = 1,
    ) -> None:
        """``indexes``: the worker's item indexes; a staged version's index must then be
        built before this worker reports its backfill complete. ``retained_versions``: how
        many previous serving versions (``RolloutState.retained``) it keeps writing natively."""
        self.registry = registry
        self.indexes = indexes
        self.store = store
        self.worker_id = worker_id
        self.user_window = user_window
        self.state = RolloutState()
        self._encoders: dict[int, Encoder] = {}
        self.serving_encoder: Encoder | None = None
        self.staged_encoder: Encoder | None = None
        self.retained_versions = retained_versions
        #: Previous serving versions written natively on every refresh, after the serving one.
        self.retained_encoders: list[Encoder] = []
        self.backfiller: Backfiller | None = None
        #: The staged version's forward fill, when it has a usable forward transform.
        self.forward: ForwardFiller | None = None
        #: Whether :attr:`backfiller` is the serving version's (an instant promote's native
        #: backfill, going on), not a staged version's.
        self.backfilling_serving = False
        self.rejected_messages = 0
        self.check = version_check(registry, self.encoder)

    def encoder(self, version: int) -> Encoder:
        if version not in self._encoders:
            self._encoders[version] = self.registry.load(version)
        return self._encoders[version]

    def start(self, serving: int, override: bool = False) -> list[dict[str, Any]]:
        """Begin serving (after the control topic was replayed into ``state``).

        The control topic's serving version wins over ``serving`` unless ``override`` (an
        operator's explicit ``--encoder-version``). Whatever the topic holds, the worker
        starts: a version that does not load gives way to ``serving``, then to the
        registry's latest.
        """
        candidates: list[int | None] = [serving] if override else [self.state.serving, serving]
        candidates.append(self.registry.latest())
        version, errors = None, []
        for candidate in dict.fromkeys(c for c in candidates if c is not None):
            try:
                self.serving_encoder = self.encoder(candidate)
            except ModelError as error:
                errors.append(f"version {candidate}: {error}")
                log.error("cannot serve version %d: %s", candidate, error)
                continue
            version = candidate
            break
        if version is None:
            raise ModelError(f"no version in the registry can be served ({'; '.join(errors)})")
        if override or self.state.serving != version:
            self.state.serving = version
        if self.store.serving_version != version:
            self.store.set_serving_version(version)
        if self.state.staged is not None:
            try:
                self._stage(self.state.staged, force=True)
            except (ControlError, ModelError) as error:
                log.error("staged version %d cannot be loaded here: %s", self.state.staged, error)
        else:
            self._resume_native_backfill(version)
        self._retain()
        return [control_message("worker", worker=self.worker_id, serving=version, override=override)]

    def _retain(self) -> None:
        """Load the encoders of the previous versions this worker keeps fresh."""
        chosen: list[Encoder] = []
        for version in self.state.retained:
            if len(chosen) >= self.retained_versions:
                break
            if version in (self.state.serving, self.state.staged):
                continue
            try:
                chosen.append(self.encoder(version))
            except ModelError as error:
                log.error("previous version %d cannot be kept fresh here: %s", version, error)
        if [e.version for e in chosen] != [e.version for e in self.retained_encoders]:
            log.info("previous versions kept fresh: %s", [e.version for e in chosen] or "none")
        self.retained_encoders = chosen

    def refresh_encoders(self) -> list[Encoder]:
        """Serving first; the staged version while one is staged (dual write); then the
        retained previous versions (kept fresh for pinned consumers and a rollback)."""
        assert self.serving_encoder is not None
        encoders: list[Encoder] = [self.serving_encoder]
        if self.staged_encoder is not None:
            encoders.append(self.staged_encoder)
        encoders.extend(self.retained_encoders)
        return encoders

    def _fold(self, message: dict[str, Any]) -> Folded:
        folded = self.state.fold(message, self.check)
        if folded.refused is not None:
            self.rejected_messages += 1
            log.error("control message %s refused: %s", message.get("op"), folded.refused)
        elif folded.malformed:
            self.rejected_messages += 1
            log.warning("control message ignored: malformed (%s)", str(message)[:200])
        return folded

    def replay(self, message: dict[str, Any]) -> Folded:
        """Fold a historical message into the state without acting on it."""
        return self._fold(message)

    def apply(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Act on a new control message; returns the messages to publish (an ack of every
        command, with ``error`` when it was refused)."""
        before = (self.state.serving, self.state.staged)
        folded = self._fold(message)
        if folded.malformed or message.get("op") not in COMMANDS:
            return []
        ack = control_message("ack", worker=self.worker_id, of=message.get("id"), command=message.get("op"))
        if folded.refused is not None:
            return [{**ack, "error": folded.refused}]
        if not folded.changed:
            return [ack] if message is self.state.last_command else []
        serving, staged = self.state.serving, self.state.staged
        # The fold checked (and loaded) every version it accepted: nothing below can refuse.
        if staged is not None and staged != before[1]:
            self._stage(staged, force=True)
            # A stage command applied live starts its fills afresh: progress left by an earlier
            # stage of the same version (cancelled or rolled back since) is stale by now.
            # (A worker replaying the topic at start resumes from the progress it kept.)
            assert self.backfiller is not None
            self.backfiller.forget()
            if self.forward is not None:
                self.forward.forget()
        if staged is None:
            # An instant promote leaves the native backfill of the new serving version to
            # finish; a rollback or a cancel ends it.
            promoted = serving is not None and serving != before[0] and serving == before[1]
            backfiller = self.backfiller
            if not (promoted and backfiller is not None and backfiller.encoder.version == serving):
                backfiller = None
            self.staged_encoder, self.forward = None, None
            self.backfiller = None if backfiller is None or backfiller.complete else backfiller
            self.backfilling_serving = self.backfiller is not None
        if serving is not None and serving != before[0]:
            self.serving_encoder = self.encoder(serving)
            self.store.set_serving_version(serving)
            log.info("serving version is now %d", serving)
        self._retain()
        return [ack]

    def _stage(self, version: int, force: bool) -> None:
        check_swappable(self.registry, version, force=force)
        self.staged_encoder = self.encoder(version)
        self.backfilling_serving = False
        self.forward = self._forward_filler(version)
        tiers = RECENCY_TIERS if self.forward is not None else (None,)
        self.backfiller = Backfiller(self.store, self.staged_encoder, self.user_window, tiers=tiers)
        if self.forward is not None:
            log.info("staged version %d: dual write, forward fill, then native backfill", version)
        else:
            log.info("staged version %d: dual write and backfill", version)

    def _forward_filler(self, version: int) -> ForwardFiller | None:
        """The forward fill of ``version``: when it has a forward transform from the serving
        version (its parent) whose report says ``forward.ecc``; ``None`` otherwise (promote
        then waits for the native backfill)."""
        manifest = self.registry.manifest(version)
        serving = self.state.serving
        if not self.state.forward_fill:
            log.info("version %d: staged without a forward fill; promote waits for the backfill", version)
            return None
        if manifest.forward is None or serving is None or manifest.parent != serving:
            return None
        report = self.registry.report(version) or {}
        if not (report.get("forward") or {}).get("ecc"):
            log.info("version %d: forward transform below its ECC; promote waits for the backfill", version)
            return None
        try:
            transform = self.registry.load_forward(version)
        except ModelError as error:
            log.error("version %d: forward transform not loaded (%s); no forward fill", version, error)
            return None
        if transform is None:
            return None
        return ForwardFiller(
            self.store,
            version,
            serving,
            lambda rows: forward_apply(transform, rows),
            transform.source_dim,
        )

    def _resume_native_backfill(self, serving: int) -> None:
        """After a restart: the native backfill of a version promoted before it finished."""
        assert self.serving_encoder is not None
        backfiller = Backfiller(self.store, self.serving_encoder, self.user_window, tiers=RECENCY_TIERS)
        if backfiller.started and not backfiller.complete:
            self.backfiller, self.backfilling_serving = backfiller, True
            log.info("version %d serves; its native backfill goes on", serving)

    def progress(self) -> dict[str, BackfillProgress]:
        """The staged version's index, forward fill (when it has one) and native backfill per
        kind. The index counts items in its graph and is complete once every item has a vector
        of the version (the forward fill, else the item backfill, is done) and the index is
        built and merged. After an instant promote: the native backfill only."""
        if self.backfiller is None:
            return {}
        backfill = self.backfiller.progress()
        if self.backfilling_serving:  # after an instant promote: the native backfill only
            return dict(backfill)
        forward = None if self.forward is None else self.forward.progress()
        # With a forward fill, every item has a vector of the version once it is done.
        items_filled = backfill["item"].complete if forward is None else forward.complete
        # The index first: a promote reading between these reports must never see users and
        # items complete before it sees the index. A worker without indexes reports 0 of 0,
        # so an index row it left before a restart with indexes off does not hold promote.
        index = BackfillProgress(0, 0, True)
        if self.indexes is not None:
            status = self.indexes.status().get(self.backfiller.encoder.version)
            items = backfill["item"]
            total = max(1, items.total, 0 if status is None else status.items)
            complete = items_filled and status is not None and status.ready
            done = total if complete else min(total - 1, 0 if status is None else status.graph_items)
            index = BackfillProgress(done, total, complete)
        return {"index": index, **({} if forward is None else {"forward": forward}), **backfill}

    @property
    def backfill_complete(self) -> bool:
        return all(p.complete for p in self.progress().values())

    def progress_messages(self, progress: dict[str, BackfillProgress] | None = None) -> list[dict[str, Any]]:
        """Progress reports to publish (of ``progress``, or of the progress now)."""
        if self.backfiller is None:
            return []
        return [
            control_message(
                "progress",
                worker=self.worker_id,
                version=self.backfiller.encoder.version,
                kind=kind,
                done=p.done,
                total=p.total,
            )
            for kind, p in (self.progress() if progress is None else progress).items()
        ]

    def describe(self) -> dict[str, Any]:
        backfill = None
        if self.backfiller is not None:
            backfill = {
                kind: {"done": p.done, "total": p.total, "complete": p.complete}
                for kind, p in self.progress().items()
            }
        return {
            "serving_version": self.state.serving,
            "staged_version": self.state.staged,
            "previous_version": self.state.previous,
            "retained_versions": [encoder.version for encoder in self.retained_encoders],
            "backfill": backfill,
        }
