"""Poison records: a record that makes the write path raise, or kills the worker, is
dead-lettered instead of stopping the stream.

Two lines of defence:

- :func:`isolate` runs a batch's computation (state update, featurisation, encoding) and, if
  it raises, finds the events that make it raise by bisection; those go to the dead-letter
  topic with the reason ``poison: <exception type>``, and the rest of the batch is applied.
  Failures of the machine rather than of a record (the store, the disk, memory) are raised
  as they are.
- :class:`CrashGuard` keeps, in the store, the source range of the batch being applied (one
  small write before it, removed by the batch's own commit). A worker that dies mid-batch
  finds the range at its next start and applies those records one at a time; if it dies
  again on one of them, the next start quarantines that record to the dead-letter topic
  (reason :data:`POISON_CRASHED`) instead of dying a third time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import orjson

from store.errors import StoreError
from store.vector_store import StoreWriter, VersionedVectorStore

__all__ = ["POISON_CRASHED", "CrashGuard", "is_systemic", "isolate"]

log = logging.getLogger("embstream.poison")

POISON_CRASHED = "poison: crashed the worker"
_INFLIGHT = "inflight"
T = TypeVar("T")


class _Record(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=_Record)


def is_systemic(error: BaseException) -> bool:
    """Whether ``error`` is the machine's failure (store, disk, memory), not a record's."""
    if isinstance(error, (StoreError, OSError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "allocate memory" in str(error)


def isolate(run: Callable[[Sequence[int] | None], T], count: int) -> tuple[T, dict[int, str]]:
    """``run(None)`` over all ``count`` events, or, when that raises because of some of them,
    ``run(rows)`` over the others; returns the result and the reason per poisoned event.

    Bisection: a failing part is split in two and each half run alone, down to single
    events. A machine failure (:func:`is_systemic`) is raised at once. Should the rest still
    fail (events harmless alone but not together), the search repeats on it.
    """
    try:
        return run(None), {}
    except Exception as error:
        if is_systemic(error):
            raise
        first: Exception = error
    poison: dict[int, str] = {}
    rows = list(range(count))
    for _ in range(8):  # each round removes at least one event, or stops
        found = _bisect(run, rows, first)
        if not found:
            break
        poison.update(found)
        rows = [row for row in rows if row not in found]
        try:
            result = run(rows)
        except Exception as error:
            if is_systemic(error):
                raise
            first = error
            continue
        log.error(
            "%d of %d events made the batch fail; they go to the dead-letter topic (%s: %s)",
            len(poison),
            count,
            type(first).__name__,
            first,
        )
        return result, poison
    # Failing together but not alone: nothing can be applied safely without them.
    for row in rows:
        poison[row] = f"poison: {type(first).__name__}"
    return run([]), poison


def _bisect(
    run: Callable[[Sequence[int] | None], object], rows: list[int], error: Exception
) -> dict[int, str]:
    """The events of ``rows`` (known to fail together) that fail alone, by halving."""
    if len(rows) == 1:
        return {rows[0]: f"poison: {type(error).__name__}"}
    found: dict[int, str] = {}
    middle = len(rows) // 2
    for part in (rows[:middle], rows[middle:]):
        try:
            run(part)
        except Exception as failure:
            if is_systemic(failure):
                raise
            found.update(_bisect(run, part, failure))
    return found


@dataclass(frozen=True)
class _Suspect:
    start: int
    end: int
    crashes: int  # deaths of workers applying a range that held these offsets


class CrashGuard:
    """Applies a dead worker's last batch one record at a time, and quarantines a record
    that kills the worker twice (see the module docstring)."""

    def __init__(self, store: VersionedVectorStore) -> None:
        self.store = store
        self.quarantined = 0
        self._suspects: dict[tuple[str, int], _Suspect] = {}
        raw = store.get_meta(_INFLIGHT)
        if raw is None:
            return
        try:
            ranges = orjson.loads(raw)
            for name, (start, end, crashes) in ranges.items():
                topic, _, partition = name.rpartition("/")
                self._suspects[(topic, int(partition))] = _Suspect(int(start), int(end), int(crashes) + 1)
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
            log.warning("the in-flight marker of the last run is unreadable; ignoring it")
            return
        for (topic, partition), suspect in sorted(self._suspects.items()):
            log.warning(
                "the last run died while applying %s[%d] offsets %d-%d (%d time(s)): applying them "
                "one record at a time%s",
                topic,
                partition,
                suspect.start,
                suspect.end,
                suspect.crashes,
                ", and quarantining the record if it is the one" if suspect.crashes >= 2 else "",
            )

    def plan(self, records: Sequence[R]) -> list[list[R]]:
        """``records`` as the batches to apply in turn: each record of a range a worker died
        in on its own, first, then the rest together (partition order is kept)."""
        if not self._suspects:
            return [list(records)]
        alone: list[list[R]] = []
        rest: list[R] = []
        for record in records:
            suspect = self._suspects.get((record.topic, record.partition))
            if suspect is not None and suspect.start <= record.offset <= suspect.end:
                alone.append([record])
            else:
                rest.append(record)
        return [*alone, rest] if rest else alone

    def begin(self, records: Sequence[_Record]) -> set[tuple[str, int, int]]:
        """Note the source range of the batch ``records`` in the store (its own small write);
        returns the records to quarantine instead of applying, as (topic, partition, offset)."""
        ranges: dict[str, list[int]] = {}
        quarantine: set[tuple[str, int, int]] = set()
        for record in records:
            source = (record.topic, record.partition)
            name = f"{record.topic}/{record.partition}"
            suspect = self._suspects.get(source)
            crashes = 0
            if suspect is not None and suspect.start <= record.offset <= suspect.end:
                crashes = suspect.crashes
                if crashes >= 2 and suspect.start == suspect.end == record.offset:
                    quarantine.add((record.topic, record.partition, record.offset))
                    continue
            span = ranges.setdefault(name, [record.offset, record.offset, crashes])
            span[0], span[1] = min(span[0], record.offset), max(span[1], record.offset)
            span[2] = max(span[2], crashes)
        writer = self.store.writer()
        writer.put_meta(_INFLIGHT, orjson.dumps(ranges))
        writer.commit()
        return quarantine

    def finish(self, writer: StoreWriter, records: Sequence[_Record]) -> None:
        """Stage the marker's removal in the batch's own ``writer``; forget suspect ranges
        that ``records`` (now applied, in that write) leave behind."""
        writer.delete_meta(_INFLIGHT)
        if not self._suspects:
            return
        for record in records:
            source = (record.topic, record.partition)
            suspect = self._suspects.get(source)
            if suspect is None:
                continue
            if record.offset >= suspect.end:
                del self._suspects[source]
            elif record.offset >= suspect.start:  # the rest of the range stays suspect
                self._suspects[source] = _Suspect(record.offset + 1, suspect.end, suspect.crashes)

    def note_quarantined(self, count: int) -> None:
        self.quarantined += count
