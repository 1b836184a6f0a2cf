"""A driver slot's loop against an in-memory driver process: start, restart
at once after a good run, back off and give up (FATAL) after failed starts,
a candidate's failed start is final, an operator's stop. No process, no
sleep: the test waits for states, and the slot's clock is the test's."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from drivebay.kernel.config import Config, TimeoutSettings
from drivebay.kernel.drivers.launch_gate import Bounds, Kind, LaunchGate
from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.drivers.restarts import RestartPolicy
from drivebay.kernel.drivers.slot import DriverSlot, SlotContext
from drivebay.protocol.errors import DriverError, DriverStartError
from drivebay.sandbox.bundles import load_bundle
from drivebay.sandbox.spawn import SpawnSpec
from tests.helpers import eventually, run
from tests.sandbox.bundles import make_bundle

S = State
ENDED = frozenset({S.RUNNING, S.FATAL, S.FAILED})  # where a start comes to rest


class World:
    """What the fake processes do: the test changes it as it goes."""

    def __init__(self) -> None:
        self.start_fails = False
        self.stop_gate: asyncio.Event | None = None  # set: a stop may end
        self.discard_gate: asyncio.Event | None = None  # set: a spare's discard may end
        self.discarding = False
        self.stopping = False
        self.processes: list[FakeProcess] = []
        self.pids = itertools.count(1000)

    def make(self, spec: SpawnSpec, timeouts: TimeoutSettings, on_event: Any) -> Any:
        process = FakeProcess(self, timeouts)
        self.processes.append(process)
        return process


class FakeProcess:
    """A driver process in memory, with the interface a slot uses."""

    def __init__(self, world: World, timeouts: TimeoutSettings) -> None:
        self.world = world
        self.timeouts = timeouts
        self.pid: int | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def alive(self) -> bool:
        return self.pid is not None and not self.exited.done()

    async def start(self) -> None:
        await self.launch()
        await self.finish_start()

    async def launch(self) -> None:
        self.pid = next(self.world.pids)

    async def finish_start(self) -> None:
        if self.world.start_fails:
            self.exited.set_result(1)
            raise DriverStartError("no Hello: exit status 1")

    async def health(self) -> dict[str, Any]:
        if not self.alive:
            raise DriverError("not running")
        return {}

    def crash(self, code: int = 1) -> None:
        self.exited.set_result(code)

    async def stop(self, drain: float | None = None) -> int:
        self.world.stopping = True
        if self.world.stop_gate is not None:
            await self.world.stop_gate.wait()
        if not self.exited.done():
            self.exited.set_result(0)
        return self.exited.result()

    async def wait(self) -> int:
        return await self.exited

    def exit_reason(self) -> str:
        return f"exit status {self.exited.result()}"

    async def answers(self, timeout: float) -> bool:
        return self.alive

    def kill_hung(self, reason: str) -> None:
        if not self.exited.done():
            self.exited.set_result(-9)

    async def discard(self) -> None:
        self.world.discarding = True
        if self.world.discard_gate is not None:
            await self.world.discard_gate.wait()
        self.kill_hung("discarded")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def slot_in(
    tmp_path: Path,
    world: World,
    clock: Clock,
    spare: bool = False,
    launches: LaunchGate | None = None,
) -> DriverSlot:
    bundle = load_bundle(make_bundle(tmp_path / "drop", name="alpha"), tmp_path / "state")
    policy = RestartPolicy(
        backoff_initial_s=0.001,
        backoff_max_s=0.001,
        max_restarts=2,
        startsecs=1.0,
        spare=spare,
        fatal_retry_initial_s=None,
    )
    config = Config(state_dir=str(tmp_path / "state"), restart=policy)

    async def prepare(_: Any) -> tuple[Path, str]:
        return Path(sys.executable), "env-key"

    context = SlotContext(
        current_config=lambda: config,
        runtime_dir=tmp_path,
        prepare=prepare,
        on_spawn=lambda *_: None,
        on_reap=lambda *_: None,
        on_event=lambda *_: None,
        clock=clock,
        new_process=world.make,
        launches=launches or LaunchGate(Bounds(starts=4, spares=4)),
    )
    return DriverSlot(bundle, context)


def moves(slot: DriverSlot) -> list[tuple[State, State]]:
    return [(t.source, t.target) for t in slot.lifecycle.history]


def in_slot(tmp_path: Path, body: Callable[[DriverSlot, World, Clock], Awaitable[None]]) -> None:
    async def main() -> None:
        world, clock = World(), Clock()
        slot = slot_in(tmp_path, world, clock)
        slot.launch()
        try:
            await body(slot, world, clock)
        finally:
            await slot.close()

    run(main())


def test_it_builds_starts_and_after_a_good_run_restarts_at_once(tmp_path):
    async def body(slot: DriverSlot, world: World, clock: Clock) -> None:
        slot.want_running()
        assert await slot.wait_settled(5, ENDED) is S.RUNNING
        assert moves(slot) == [
            (S.STOPPED, S.BUILDING),
            (S.BUILDING, S.STARTING),
            (S.STARTING, S.RUNNING),
        ]
        clock.now += 10  # ran longer than startsecs
        world.processes[0].crash()
        await eventually(lambda: len(world.processes) == 2 and slot.state is S.RUNNING)
        assert moves(slot)[3:] == [(S.RUNNING, S.STARTING), (S.STARTING, S.RUNNING)]
        assert slot.restarts.total == 1

    in_slot(tmp_path, body)


def test_failed_starts_back_off_then_fatal(tmp_path):
    async def body(slot: DriverSlot, world: World, clock: Clock) -> None:
        world.start_fails = True
        slot.want_running()
        assert await slot.wait_settled(5, frozenset({S.FATAL})) is S.FATAL
        assert moves(slot) == [
            (S.STOPPED, S.BUILDING),
            (S.BUILDING, S.STARTING),
            (S.STARTING, S.BACKOFF),
            (S.BACKOFF, S.STARTING),
            (S.STARTING, S.BACKOFF),
            (S.BACKOFF, S.STARTING),
            (S.STARTING, S.FATAL),
        ]
        assert "gave up after 2 restarts" in slot.lifecycle.reason
        assert not any(p.alive for p in world.processes)

    in_slot(tmp_path, body)


def test_a_candidates_failed_start_is_final(tmp_path):
    async def body(slot: DriverSlot, world: World, clock: Clock) -> None:
        world.start_fails = True
        slot.candidate = True
        slot.want_running()
        assert await slot.wait_settled(5, ENDED) is S.FAILED
        assert len(world.processes) == 1  # not retried
        assert "no Hello" in slot.lifecycle.reason

    in_slot(tmp_path, body)


def test_an_operators_stop_stops_the_process_and_a_start_brings_it_back(tmp_path):
    async def body(slot: DriverSlot, world: World, clock: Clock) -> None:
        slot.want_running()
        assert await slot.wait_settled(5, ENDED) is S.RUNNING
        slot.want_stopped()
        assert await slot.wait_settled(5, frozenset({S.STOPPED})) is S.STOPPED
        assert moves(slot)[-2:] == [(S.RUNNING, S.STOPPING), (S.STOPPING, S.STOPPED)]
        assert world.processes[0].exited.result() == 0
        slot.want_running(reset=True)
        assert await slot.wait_settled(5, ENDED) is S.RUNNING
        assert moves(slot)[-2:] == [(S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING)]

    in_slot(tmp_path, body)


def test_a_cancelled_close_lets_the_stop_end_and_stays_cancelled(tmp_path):
    """Its caller cancelled (a daemon stopping while it retires a version),
    ``close`` neither cuts the driver's stop short nor swallows the cancel:
    the cancelled reconciler must not carry on as if nothing had happened."""

    async def main() -> None:
        world, clock = World(), Clock()
        slot = slot_in(tmp_path, world, clock)
        slot.launch()
        slot.want_running()
        assert await slot.wait_settled(5, ENDED) is S.RUNNING
        world.stop_gate = asyncio.Event()
        closing = asyncio.ensure_future(slot.close())
        await eventually(lambda: world.stopping)
        closing.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not closing.done()  # the stop goes on
        world.stop_gate.set()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert not world.processes[0].alive

    run(main())


def test_a_reload_while_the_slot_stops_starts_no_spare(tmp_path):
    """A reload (``reconfigure``) that comes while a stop discards the spare,
    the slot still RUNNING, must not start a spare for a slot going down."""

    async def main() -> None:
        world, clock = World(), Clock()
        slot = slot_in(tmp_path, world, clock, spare=True)
        slot.launch()
        slot.want_running()
        assert await slot.wait_settled(5, ENDED) is S.RUNNING
        await eventually(lambda: slot.spare_pid is not None)
        world.discard_gate = asyncio.Event()
        slot.want_stopped()  # an operator's stop: the slot stays, going down
        await eventually(lambda: world.discarding)  # the spare goes first, still RUNNING
        assert slot.state is S.RUNNING
        made = len(world.processes)
        slot.reconfigure()
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(world.processes) == made  # no spare launched
        world.discard_gate.set()
        assert await slot.wait_settled(5, frozenset({S.STOPPED})) is S.STOPPED
        for _ in range(5):
            await asyncio.sleep(0)
        assert not any(p.alive for p in world.processes)
        await slot.close()

    run(main())


def test_a_candidate_launches_its_spare_only_once_it_serves(tmp_path):
    """A new version's spare would start (an interpreter and its imports)
    while resources are handed over to it, taking CPU from the handover: it
    is launched when the candidate serves (``candidate`` set False)."""

    async def main() -> None:
        world, clock = World(), Clock()
        slot = slot_in(tmp_path, world, clock, spare=True)
        slot.candidate = True
        slot.launch()
        slot.want_running()
        assert await slot.wait_settled(5, ENDED) is S.RUNNING
        for _ in range(5):
            await asyncio.sleep(0)
        assert slot.spare_pid is None
        assert len(world.processes) == 1  # the running one only
        slot.candidate = False  # the handover to it is done
        await eventually(lambda: slot.spare_pid is not None)
        assert len(world.processes) == 2
        await slot.close()
        assert not any(p.alive for p in world.processes)

    run(main())


def test_a_start_waits_its_turn_at_the_gate_and_a_stop_meanwhile_spawns_nothing(tmp_path):
    """Launches pass the kernel's gate: a start waits (STARTING) while the
    gate is full, and one stopped while waiting never spawns a process."""

    async def main() -> None:
        world, clock = World(), Clock()
        gate = LaunchGate(Bounds(starts=1, spares=1))
        slot = slot_in(tmp_path, world, clock, launches=gate)
        slot.launch()
        async with gate.launch(Kind.START):  # another driver's start holds the place
            slot.want_running()
            await eventually(lambda: gate.counts().starts_waiting == 1)
            assert slot.state is S.STARTING and world.processes == []
            slot.want_stopped()
        assert await slot.wait_settled(5) is S.STOPPED
        assert world.processes == []
        await slot.close()

    run(main())
