"""The rollout state: serving, staged and previous versions, folded from control messages.

Applying the whole control topic from the start, in order, always gives the same
:class:`RolloutState`, and applying a message twice changes nothing, so a worker restarted in
the middle of a rollout resumes it in the right state by replaying the topic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stream.rollout.messages import malformed_reason

__all__ = ["REFUSALS_KEPT", "Folded", "RolloutState", "VersionCheck"]

#: How many refused commands the state keeps for ``swap status``.
REFUSALS_KEPT = 50


#: ``check(op, version, force)``: why a command of ``op`` must not act on ``version`` (it is
#: not in the registry, its files do not verify or load, or a stage fails the gate), or
#: ``None``. ``op`` is a command or ``"worker"`` (a hello's serving version).
VersionCheck = Callable[[str, int, bool], str | None]


@dataclass(frozen=True)
class Folded:
    """What one message did to the state."""

    changed: bool  # the serving or staged version changed
    refused: str | None = None  # a command (or hello) that was not acted on, and why
    malformed: bool = False


@dataclass
class RolloutState:
    """Serving, staged and previous versions, folded from the control topic.

    :meth:`fold` is the one function both a worker's replay at start and its live apply go
    through, so a message refused live is refused on replay too: every command is checked
    against the state and (through ``check``) the registry before it changes anything.
    """

    serving: int | None = None
    staged: int | None = None
    previous: int | None = None
    rate: float | None = None
    #: Whether the staged version may be filled forward first (``swap stage --no-forward``).
    forward_fill: bool = True
    acks: dict[str, set[str]] = field(default_factory=dict)  # message id -> workers
    #: version -> id of the command that staged it: the workers that acknowledged that
    #: command must all finish the backfill before promote (not only those that reported).
    stage_ids: dict[int, str] = field(default_factory=dict)
    progress: dict[tuple[str, int, str], tuple[int, int]] = field(default_factory=dict)
    #: Earlier serving versions still written natively on every refresh (most recent first;
    #: workers keep the first ``EMBSTREAM_RETAINED_VERSIONS`` of them fresh), so consumers
    #: pinned to them and a rollback get fresh native vectors. ``retire`` removes one.
    retained: list[int] = field(default_factory=list)
    last_command_id: str | None = None
    last_command: dict[str, Any] | None = None
    #: Ids of every command seen: a command is acted on once, so re-sending an old (even
    #: signed) command changes nothing. Deterministic, since every reader folds the whole topic.
    seen_commands: set[str] = field(default_factory=set)
    #: Messages a reader left out, by reason (malformed, unsigned, forged, refused).
    ignored: Counter[str] = field(default_factory=Counter)
    #: The latest commands that were not acted on: ``{"id", "op", "version", "reason"}``.
    refused: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, message: dict[str, Any], check: VersionCheck | None = None) -> bool:
        """Fold one message; True when the serving or staged version changed."""
        return self.fold(message, check).changed

    def fold(self, message: dict[str, Any], check: VersionCheck | None = None) -> Folded:
        """Fold one message (see the class docstring); never raises on what it holds.

        A message that does not follow its op's schema is counted as malformed and skipped.
        Without ``check`` every version is taken to exist (for readers without a registry).
        """
        if malformed_reason(message) is not None:
            self.ignored["malformed"] += 1
            return Folded(False, malformed=True)
        op = message["op"]
        if op == "ack":
            self.acks.setdefault(message["of"], set()).add(message["worker"])
            return Folded(False)
        if op == "progress":
            key = (message["worker"], message["version"], message["kind"])
            self.progress[key] = (message["done"], message["total"])
            return Folded(False)
        if op == "worker":  # a worker's hello: the serving version it started with
            serving = message["serving"]
            if self.serving is not None and not message.get("override"):
                return Folded(False)
            reason = None if check is None else check("worker", serving, False)
            if reason is not None:
                return self._refuse(message, serving, reason)
            self.serving = serving
            return Folded(False)
        command_id = message["id"]
        if command_id in self.seen_commands:
            return Folded(False)  # a re-sent command: acted on (or refused) the first time
        self.seen_commands.add(command_id)
        before = (self.serving, self.staged)
        version = message["to"] if op == "rollback" else message["version"]
        force = bool(message.get("force"))
        reason = self._refusal(op, message, version, force)
        if reason is None and op in ("stage", "promote", "rollback") and check is not None:
            reason = check(op, version, force)
        if reason is not None:
            return self._refuse(message, version, reason)
        if op == "stage":
            if self.staged != version:
                self.staged, self.rate = version, message.get("rate")
                self.forward_fill = message.get("forward", True) is not False
                self.stage_ids[version] = command_id
        elif op == "promote":
            if self.serving is not None:
                self.retained = [
                    self.serving,
                    *(r for r in self.retained if r not in (version, self.serving)),
                ]
            self.previous, self.serving, self.staged = self.serving, version, None
        elif op == "rollback":
            left = message["from"]  # the version rolled back from is kept fresh in turn
            self.retained = [left, *(r for r in self.retained if r not in (version, left))]
            self.serving, self.previous, self.staged = version, None, None
        elif op == "retire":
            self.retained = [r for r in self.retained if r != version]
        else:  # cancel
            self.staged = None
        self.last_command_id, self.last_command = command_id, message
        return Folded((self.serving, self.staged) != before or op == "retire")

    def _refusal(self, op: str, message: dict[str, Any], version: int, force: bool) -> str | None:
        """Why ``op`` cannot act in the current state (before the registry is asked)."""
        if op == "stage" and version == self.serving:
            return f"version {version} is the serving version"
        if op == "promote" and version == self.serving:
            return f"version {version} is already the serving version"
        if op == "promote" and self.staged != version and not force:
            return f"version {version} is not staged"
        if op == "rollback" and message["from"] != self.serving:
            return f"version {message['from']} is not the serving version (it is {self.serving})"
        if op == "rollback" and version == self.serving:
            return f"version {version} is already the serving version"
        if op == "cancel" and self.staged != version:
            return f"version {version} is not staged"
        if op == "retire" and version not in self.retained:
            return f"version {version} is not a retained previous version (retained: {self.retained})"
        return None

    def _refuse(self, message: dict[str, Any], version: int, reason: str) -> Folded:
        self.ignored["refused"] += 1
        self.refused.append(
            {"id": message.get("id"), "op": message["op"], "version": version, "reason": reason}
        )
        del self.refused[:-REFUSALS_KEPT]
        return Folded(False, refused=reason)

    def promotable(self, version: int) -> bool:
        """Whether a promote of ``version`` may go ahead: :meth:`backfill_complete`, except that
        a worker reporting a forward fill of ``version`` needs only that fill and its item
        index done (its native backfill goes on after the promote)."""
        reports = {(w, k): dp for (w, v, k), dp in self.progress.items() if v == version}
        workers = {w for w, _ in reports} | self.acks.get(self.stage_ids.get(version, ""), set())
        if not workers:
            return False
        for worker in workers:
            kinds = {k for w, k in reports if w == worker}
            needed = {"forward", *({"index"} & kinds)} if "forward" in kinds else {"user", "item", *kinds}
            for kind in needed:
                done_total = reports.get((worker, kind))
                if done_total is None or done_total[0] < done_total[1]:
                    return False
        return True

    def backfill_complete(self, version: int, kinds: tuple[str, ...] = ("user", "item")) -> bool:
        """Every worker that acknowledged the stage of ``version`` or reported on it has
        finished every kind, and its item index where it reports one (a worker that
        acknowledged and has not reported yet is not done)."""
        reports = {(w, k): dp for (w, v, k), dp in self.progress.items() if v == version}
        workers = {w for w, _ in reports} | self.acks.get(self.stage_ids.get(version, ""), set())
        # Kinds a worker reports beyond those required (its item index) must be done too.
        wanted = {(w, k) for w in workers for k in kinds} | set(reports)
        return bool(workers) and all(
            pair in reports and reports[pair][0] >= reports[pair][1] for pair in wanted
        )
