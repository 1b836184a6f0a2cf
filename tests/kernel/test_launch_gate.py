"""The launch gate: starts a few at a time, spares only once no start wave is
in progress and no start runs or waits. ``admit`` as a table; ``LaunchGate``
with plain futures on a loop (no process, no clock)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from drivebay.kernel.drivers.launch_gate import Bounds, Counts, Kind, LaunchGate, admit, bounds_for
from tests.helpers import run

B = Bounds(starts=2, spares=1)


@pytest.mark.parametrize(
    ("counts", "admitted"),
    [
        (Counts(starts_waiting=5), (2, 0)),
        (Counts(starts_waiting=5, starts_running=1), (1, 0)),
        (Counts(starts_waiting=5, starts_running=2), (0, 0)),
        (Counts(spares_waiting=3), (0, 1)),
        (Counts(spares_waiting=3, spares_running=1), (0, 0)),
        (Counts(spares_waiting=3, waves=True), (0, 0)),  # a wave in progress
        (Counts(spares_waiting=3, starts_running=1), (0, 0)),  # a start runs
        (Counts(spares_waiting=3, starts_waiting=1, starts_running=2), (0, 0)),  # ... or waits
        (Counts(starts_waiting=1, spares_waiting=1, spares_running=1), (1, 0)),  # starts pass
    ],
)
def test_admit(counts, admitted):
    assert admit(counts, B) == admitted


def test_bounds_fit_the_cpus():
    assert bounds_for(1) == Bounds(starts=4, spares=1)
    assert bounds_for(2) == Bounds(starts=8, spares=2)
    assert bounds_for(8) == Bounds(starts=32, spares=8)


class Launches:
    """Launches held open until the test lets them end; records who got in."""

    def __init__(self, gate: LaunchGate) -> None:
        self.gate = gate
        self.inside: list[str] = []
        self.done: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def begin(self, name: str, kind: Kind) -> None:
        self.done[name] = asyncio.Event()
        self.tasks[name] = asyncio.ensure_future(self._hold(name, kind))

    async def _hold(self, name: str, kind: Kind) -> None:
        async with self.gate.launch(kind):
            self.inside.append(name)
            await self.done[name].wait()

    async def end(self, name: str) -> None:
        self.done[name].set()
        await self.tasks[name]

    async def settle(self) -> None:
        for _ in range(5):  # let every admitted waiter run (no clock involved)
            await asyncio.sleep(0)


def test_spares_wait_for_the_waves_and_the_starts():
    async def scenario() -> None:
        launches = Launches(LaunchGate(B))
        with launches.gate.waves():
            launches.begin("spare-1", Kind.SPARE)
            for n in range(3):
                launches.begin(f"start-{n}", Kind.START)
            await launches.settle()
            assert launches.inside == ["start-0", "start-1"]  # the bound
            await launches.end("start-0")
            await launches.settle()
            assert launches.inside == ["start-0", "start-1", "start-2"]
            await launches.end("start-1")
            await launches.end("start-2")
            await launches.settle()
            assert "spare-1" not in launches.inside  # the wave is still in progress
        await launches.settle()
        assert launches.inside[-1] == "spare-1"
        launches.begin("spare-2", Kind.SPARE)
        launches.begin("start-3", Kind.START)  # a restart, say: it passes the waiting spare
        await launches.settle()
        assert launches.inside[-1] == "start-3"
        await launches.end("spare-1")
        await launches.end("start-3")
        await launches.settle()
        assert launches.inside[-1] == "spare-2"
        await launches.end("spare-2")
        assert launches.gate.counts() == Counts()

    run(scenario())


def test_a_cancelled_waiter_leaves_the_queue_and_lets_others_in():
    async def scenario() -> None:
        launches = Launches(LaunchGate(Bounds(starts=1, spares=1)))
        launches.begin("start-0", Kind.START)
        launches.begin("start-1", Kind.START)
        launches.begin("spare", Kind.SPARE)
        await launches.settle()
        launches.tasks["start-1"].cancel()  # waiting: it leaves the queue
        with contextlib.suppress(asyncio.CancelledError):
            await launches.tasks["start-1"]
        await launches.end("start-0")
        await launches.settle()
        assert launches.inside == ["start-0", "spare"]
        launches.tasks["spare"].cancel()  # inside: its place is given back
        with contextlib.suppress(asyncio.CancelledError):
            await launches.tasks["spare"]
        assert launches.gate.counts() == Counts()

    run(scenario())


def test_a_waiter_cancelled_as_a_place_frees_up_holds_no_place():
    """The waiter is cancelled (its future with it) and, in the same loop
    pass, before it runs, the launch inside ends: the gate must not admit the
    cancelled future (set_result on it raised in the releaser, and the place
    it counted was never given back: a gate that, after a few such stops,
    admits no start at all)."""

    async def scenario() -> None:
        launches = Launches(LaunchGate(Bounds(starts=1, spares=1)))
        launches.begin("start-0", Kind.START)
        launches.begin("start-1", Kind.START)
        await launches.settle()
        launches.done["start-0"].set()  # start-0 leaves first in the next pass...
        launches.tasks["start-1"].cancel()  # ...before start-1 sees its cancel
        await launches.tasks["start-0"]
        with contextlib.suppress(asyncio.CancelledError):
            await launches.tasks["start-1"]
        assert launches.gate.counts() == Counts()
        launches.begin("start-2", Kind.START)
        await launches.settle()
        assert launches.inside == ["start-0", "start-2"]
        await launches.end("start-2")

    run(scenario())
