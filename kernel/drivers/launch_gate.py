"""When a driver's process may be launched: starts first, a few at a time; spares after.

Launching a child (an interpreter, the runtime's imports, then the driver's
own) costs about 100 ms of CPU and is the bulk of a start. A hundred of them
at once on two CPUs share the CPUs a hundred ways with each other and with
drivebayd, which then answers its clients seconds late, and a warm spare
launched meanwhile takes CPU from the very drivers a wave waits for. So every
launch passes this gate, in one of two classes:

- a *start* (a wave of the start plan, a restart without a spare, an
  operator's start) is admitted while fewer than ``Bounds.starts`` starts run,
  first come first served;
- a *spare* is admitted only while no start wave is in progress and no start
  runs or waits, and while fewer than ``Bounds.spares`` spares are launching.
  A spare that is launching when a start comes finishes (a launch cannot be
  taken back); the next spare waits.

A launch holds its place until its child has said Hello (a spare) or Ready
(a start): the costly part. ``admit`` decides from counts alone and is the
whole policy; ``LaunchGate`` is its queue on the event loop. A wait at the
gate is bounded by the start deadlines of those admitted before it, except a
spare's, which waits for as long as starts keep coming: that is its purpose.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass


class Kind(enum.Enum):
    START = "start"
    SPARE = "spare"


@dataclass(frozen=True)
class Bounds:
    """How many launches of each kind may run at once."""

    starts: int
    spares: int


def bounds_for(cpus: int) -> Bounds:
    """Four starts per CPU: a start waits much of its time (on the disk, on
    its handshake with the daemon), and with 100 drivers on 2 CPUs, 8 at
    once started them faster than 4 or 6 while status still answered within
    20 ms (p99); one spare per CPU, admitted only when no start wants one."""
    return Bounds(starts=max(2, 4 * cpus), spares=max(1, cpus))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, not the host's count)."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Counts:
    """The gate's state: launches waiting and running of each kind, and
    whether a start wave is in progress."""

    starts_waiting: int = 0
    starts_running: int = 0
    spares_waiting: int = 0
    spares_running: int = 0
    waves: bool = False


def admit(counts: Counts, bounds: Bounds) -> tuple[int, int]:
    """How many waiting (starts, spares) to admit now."""
    starts = max(0, min(counts.starts_waiting, bounds.starts - counts.starts_running))
    busy = counts.waves or counts.starts_running + counts.starts_waiting > 0
    spares = (
        0 if busy else max(0, min(counts.spares_waiting, bounds.spares - counts.spares_running))
    )
    return starts, spares


class LaunchGate:
    """The queue in front of every launch (``admit`` decides); on the loop."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self._waiting: dict[Kind, collections.deque[asyncio.Future[None]]] = {
            kind: collections.deque() for kind in Kind
        }
        self._running = dict.fromkeys(Kind, 0)
        self._waves = 0

    def counts(self) -> Counts:
        return Counts(
            starts_waiting=len(self._waiting[Kind.START]),
            starts_running=self._running[Kind.START],
            spares_waiting=len(self._waiting[Kind.SPARE]),
            spares_running=self._running[Kind.SPARE],
            waves=self._waves > 0,
        )

    @contextlib.contextmanager
    def waves(self) -> Iterator[None]:
        """While the start plan's waves run (the kernel's reconcile pass):
        no spare is admitted."""
        self._waves += 1
        try:
            yield
        finally:
            self._waves -= 1
            self._pump()

    @contextlib.asynccontextmanager
    async def launch(self, kind: Kind) -> AsyncIterator[None]:
        """Hold a place of ``kind`` for the body: wait until admitted."""
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[kind].append(admitted)
        self._pump()
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():
                self._release(kind)  # admitted as the cancel came: give it back
            else:
                # Still queued, unless a _pump already dropped it as cancelled.
                with contextlib.suppress(ValueError):
                    self._waiting[kind].remove(admitted)
                self._pump()  # a start no longer waiting may let spares in
            raise
        try:
            yield
        finally:
            self._release(kind)

    def _release(self, kind: Kind) -> None:
        self._running[kind] -= 1
        self._pump()

    def _pump(self) -> None:
        # A waiter cancelled in this loop pass has a cancelled future, and
        # has not yet run to leave the queue: it is no longer waiting.
        for waiting in self._waiting.values():
            for future in [f for f in waiting if f.cancelled()]:
                waiting.remove(future)
        starts, spares = admit(self.counts(), self.bounds)
        for kind, count in ((Kind.START, starts), (Kind.SPARE, spares)):
            for _ in range(count):
                self._running[kind] += 1
                self._waiting[kind].popleft().set_result(None)
