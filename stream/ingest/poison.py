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
  finds the range at its next start and tries each of those records alone first; if it dies
  again on one of them, the next start quarantines that record to the dead-letter topic
  (reason :data:`POISON_CRASHED`) instead of dying a third time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson

from store.errors import StoreError
from store.vector_store import VersionedVectorStore
from store.writer import StoreWriter
from stream.ingest.records import RecordPosition

__all__ = ["POISON_CRASHED", "BatchStart", "CrashGuard", "is_systemic", "isolate"]

log = logging.getLogger("embstream.poison")

POISON_CRASHED = "poison: crashed the worker"
_INFLIGHT = "inflight"
T = TypeVar("T")


R = TypeVar("R", bound=RecordPosition)


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
    #: the marker named exactly one record (not a range narrowed down as it was applied)
    pinned: bool = False


@dataclass
class BatchStart(Generic[R]):
    """What :meth:`CrashGuard.begin` decided for a batch."""

    #: (topic, partition, offset) of records to dead-letter unread: they killed a worker twice
    quarantine: set[tuple[str, int, int]]
    #: records of a range a worker died in: each is applied alone first, to a write that is
    #: thrown away, under a marker naming it (:meth:`CrashGuard.rehearsing`)
    rehearse: list[R]


class CrashGuard:
    """Finds the record that kills a worker, and quarantines it once it has done so twice.

    Before each batch, :meth:`begin` writes the batch's source range per partition (with
    how many deaths that range has seen) under one key in the store; the batch's own commit
    removes it (:meth:`finish`). A worker that finds the key at start knows the last run died
    applying that range:

    - after one death, each record of the range is first *rehearsed* alone (applied to a
      write that is thrown away) under a marker naming that record, then the batch is applied
      as usual: a record that kills the worker again is named by the marker;
    - a record named after two deaths is quarantined: dead-lettered unread with the reason
      :data:`POISON_CRASHED`;
    - a range that killed the worker twice although each of its records survived its
      rehearsal (the batch as a whole is the trouble) is applied one record per batch.
    """

    def __init__(self, store: VersionedVectorStore) -> None:
        self.store = store
        self._suspects: dict[tuple[str, int], _Suspect] = {}
        self._ranges: dict[str, list[int]] = {}
        raw = store.get_meta(_INFLIGHT)
        if raw is None:
            return
        try:
            ranges = orjson.loads(raw)
            for name, (start, end, crashes) in ranges.items():
                topic, _, partition = name.rpartition("/")
                suspect = _Suspect(int(start), int(end), int(crashes) + 1, pinned=int(start) == int(end))
                self._suspects[(topic, int(partition))] = suspect
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
            log.warning("the in-flight marker of the last run is unreadable; ignoring it")
            return
        for (topic, partition), suspect in sorted(self._suspects.items()):
            if suspect.pinned and suspect.crashes >= 2:
                then = "quarantining that record"
            elif suspect.crashes >= 2:
                then = "applying them one record per batch"
            else:
                then = "trying each record alone before applying them"
            log.warning(
                "the last run died while applying %s[%d] offsets %d-%d (%d time(s)): %s",
                topic,
                partition,
                suspect.start,
                suspect.end,
                suspect.crashes,
                then,
            )

    def _suspect(self, record: RecordPosition) -> _Suspect | None:
        suspect = self._suspects.get((record.topic, record.partition))
        if suspect is not None and suspect.start <= record.offset <= suspect.end:
            return suspect
        return None

    def plan(self, records: Sequence[R]) -> list[list[R]]:
        """``records`` as the batches to apply in turn: one, unless they hold a range that
        killed a worker twice as a whole; its records then go one per batch, first."""
        alone: list[list[R]] = []
        rest: list[R] = []
        for record in records:
            suspect = self._suspect(record) if self._suspects else None
            if suspect is not None and suspect.crashes >= 2 and not suspect.pinned:
                alone.append([record])
            else:
                rest.append(record)
        return [*alone, rest] if rest else alone

    def begin(self, records: Sequence[R]) -> BatchStart[R]:
        """Note the source range of the batch ``records`` in the store (its own small write)
        and say which of its records to quarantine and which to rehearse."""
        ranges: dict[str, list[int]] = {}
        start: BatchStart[R] = BatchStart(set(), [])
        for record in records:
            suspect = self._suspect(record) if self._suspects else None
            crashes = 0
            if suspect is not None:
                crashes = suspect.crashes
                if crashes >= 2 and suspect.pinned:
                    start.quarantine.add((record.topic, record.partition, record.offset))
                    continue
                if crashes == 1 and len(records) > 1:
                    start.rehearse.append(record)
            name = f"{record.topic}/{record.partition}"
            span = ranges.setdefault(name, [record.offset, record.offset, crashes])
            span[0], span[1] = min(span[0], record.offset), max(span[1], record.offset)
            span[2] = max(span[2], crashes)
        self._ranges = ranges
        self._mark(ranges)
        return start

    @contextlib.contextmanager
    def rehearsing(self, record: RecordPosition) -> Iterator[None]:
        """Mark ``record`` alone as in flight while the caller rehearses it, then the batch
        again (a death during the rehearsal names the record, not the batch)."""
        suspect = self._suspect(record)
        crashes = 1 if suspect is None else suspect.crashes
        self._mark({f"{record.topic}/{record.partition}": [record.offset, record.offset, crashes]})
        yield
        self._mark(self._ranges)

    def _mark(self, ranges: dict[str, list[int]]) -> None:
        writer = self.store.writer()
        writer.put_meta(_INFLIGHT, orjson.dumps(ranges))
        writer.commit()

    def finish(self, writer: StoreWriter, records: Sequence[RecordPosition]) -> None:
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
