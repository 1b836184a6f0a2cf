"""The calls of ``scale.py``: the same load on 4 drivers and on 100, beside the floor.

CALLERS callers over RESOURCES resources, each caller looping over its own
resources; windows of each load in turn (the order rotating), and per call
the CPU time, context switches and syscalls of each process, read from
``/proc`` (and, in a window of its own, counted by ``perf``). The loads run
against drivebayd (``AsyncClient`` over CONNECTIONS connections) and against
``_scale_floor``'s relay and echo processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import _common
import _scale_floor
import _scale_proc
import upgrade
from _scale_proc import Usage

from drivebay.client import AsyncClient

CONNECTIONS = 4
CALLERS = 200
RESOURCES = 400
FEW = 4  # drivers of the concentrated load
ADD_IN_FLIGHT = 200


class Windows(Protocol):
    """How long the loads run (``scale.Plan``)."""

    @property
    def rounds(self) -> int: ...
    @property
    def warmup_s(self) -> float: ...
    @property
    def window_s(self) -> float: ...
    @property
    def floor(self) -> bool: ...


CallOne = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class Target:
    """A load's calls (one per resource) and the processes doing the work, by role."""

    label: str
    calls: list[CallOne]
    roles: Callable[[], dict[str, list[int]]]


@dataclass(frozen=True)
class Sample:
    calls: int
    seconds: float
    latencies: list[float]  # seconds
    used: dict[str, Usage]  # by role


class Load:
    """CALLERS callers, caller c looping over calls c, c + CALLERS, ..."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.starts: list[float] = []
        self.latencies: list[float] = []
        self.done = 0
        self.stop = asyncio.Event()
        self._ops = itertools.count()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for caller in range(CALLERS):
                group.create_task(self._caller(self.target.calls[caller::CALLERS]))

    async def _caller(self, calls: list[CallOne]) -> None:
        clock, ops = time.perf_counter, self._ops
        for seq, call in enumerate(itertools.cycle(calls), 1):
            if self.stop.is_set():
                return
            start = clock()
            await call({"number": next(ops), "seq": seq})
            self.starts.append(start)
            self.latencies.append(clock() - start)
            self.done += 1

    def sample(self, start: float, end: float, used: dict[str, Usage]) -> Sample:
        latencies = [
            latency
            for began, latency in zip(self.starts, self.latencies, strict=True)
            if start <= began < end
        ]
        if not latencies:
            raise RuntimeError(f"{self.target.label}: no call started in the window")
        return Sample(len(latencies), end - start, latencies, used)


def role_usage(roles: dict[str, list[int]]) -> dict[str, Usage]:
    return {role: _scale_proc.usage(pids) for role, pids in roles.items()}


async def measure(target: Target, plan: Windows) -> Sample:
    """Warm up, then one window; the load ends with it."""
    load = Load(target)
    roles = target.roles()
    async with asyncio.TaskGroup() as group:
        group.create_task(load.run())
        await asyncio.sleep(plan.warmup_s)
        before, start = role_usage(roles), time.perf_counter()
        await asyncio.sleep(plan.window_s)
        end, after = time.perf_counter(), role_usage(roles)
        load.stop.set()
    return load.sample(start, end, {role: after[role] - before[role] for role in roles})


async def traced(target: Target, plan: Windows) -> dict[str, float]:
    """Syscalls per call of each role, counted by perf over one window."""
    load = Load(target)
    roles = target.roles()
    async with asyncio.TaskGroup() as group:
        group.create_task(load.run())
        await asyncio.sleep(plan.warmup_s)
        async with contextlib.AsyncExitStack() as stack:
            counts = {
                role: await stack.enter_async_context(_scale_proc.syscall_counter(pids))
                for role, pids in roles.items()
            }
            each = _scale_proc.syscall_counter(roles["hub"], _scale_proc.EACH_SYSCALL)
            by_name = await stack.enter_async_context(each)
            first = load.done
            await asyncio.sleep(plan.window_s)
        calls = load.done - first  # perf stopped: its count covers no more than these
        load.stop.set()
    found = {role: count["syscalls"] / calls for role, count in counts.items()}
    named = sorted(by_name.items(), key=lambda item: -item[1])
    found.update({f"hub {name}": count / calls for name, count in named if count})
    return found


def placement(names: list[str]) -> dict[str, dict[str, str]]:
    """The load's resources and their drivers: 4 drivers x 100 resources, and
    every driver with an equal share."""
    few = {f"a{n:03d}": names[n * FEW // RESOURCES] for n in range(RESOURCES)}
    many = {f"b{n:03d}": names[n * len(names) // RESOURCES] for n in range(RESOURCES)}
    return {f"{FEW} drivers": few, f"{len(names)} drivers": many}


async def add_resources(clients: list[AsyncClient], placed: dict[str, str]) -> None:
    """``resource-add`` each resource on its driver, ADD_IN_FLIGHT at a time."""
    slots = asyncio.Semaphore(ADD_IN_FLIGHT)

    async def add(client: AsyncClient, resource: str, driver: str) -> None:
        async with slots:
            await client.request("resource-add", id=resource, driver=driver, assignments=[])

    async with asyncio.TaskGroup() as group:
        for n, (resource, driver) in enumerate(placed.items()):
            group.create_task(add(clients[n % len(clients)], resource, driver))


def _daemon_call(client: AsyncClient, resource: str, args: dict[str, Any]) -> Awaitable[Any]:
    return client.call(resource, "record", args)


async def drivebay_targets(
    daemon: Any, clients: list[AsyncClient], names: list[str], name: str = "drivebayd"
) -> list[Target]:
    targets = []
    for label, placed in placement(names).items():
        await add_resources(clients, placed)
        calls: list[CallOne] = [
            functools.partial(_daemon_call, clients[n % len(clients)], resource)
            for n, resource in enumerate(placed)
        ]
        await asyncio.gather(*(call({"number": -1, "seq": 0}) for call in calls))  # attached

        def roles(pid: int = daemon.pid) -> dict[str, list[int]]:
            return {"here": [os.getpid()], "hub": [pid], "workers": _scale_proc.descendants(pid)}

        targets.append(Target(f"{name}, {label}", calls, roles))
    return targets


def _floor_call(
    client: _scale_floor.Client, connection: int, resource: str, args: dict[str, Any]
) -> Awaitable[Any]:
    return client.call(connection, resource, args)


FLOORS = [("floor", False), ("floor batch", True)]  # (label, SCHED_BATCH echo processes)


def floor_targets(
    client: _scale_floor.Client, names: list[str], relay: int, echoes: list[int], name: str
) -> list[Target]:
    def roles() -> dict[str, list[int]]:
        return {"here": [os.getpid()], "hub": [relay], "workers": echoes}

    return [
        Target(
            f"{name}, {label}",
            [
                functools.partial(_floor_call, client, n % CONNECTIONS, resource)
                for n, resource in enumerate(placed)
            ],
            roles,
        )
        for label, placed in placement(names).items()
    ]


def floor_table(names: list[str]) -> dict[str, int]:
    index = {name: n for n, name in enumerate(names)}
    return {
        resource: index[driver]
        for placed in placement(names).values()
        for resource, driver in placed.items()
    }


@dataclass(frozen=True)
class Figures:
    calls_per_s: float  # median of the windows
    p50_ms: float
    p99_ms: float
    calls: int
    per_call: dict[str, dict[str, float]]  # role -> {cpu_us, voluntary, ...}
    per_window: list[float]
    cpus_busy: float  # CPU time of every role over the windows' time: CPUs kept busy


def summarise(samples: list[Sample]) -> Figures:
    latencies = sorted(itertools.chain.from_iterable(s.latencies for s in samples))
    calls = sum(s.calls for s in samples)
    per_call = {}
    for role in samples[0].used:
        used = sum((s.used[role] for s in samples), Usage())
        ticks = used.system_ticks + used.user_ticks
        per_call[role] = {
            "cpu_us": used.cpu_ns / 1e3 / calls,
            "voluntary": used.voluntary / calls,
            "involuntary": used.involuntary / calls,
            "rw_syscalls": used.rw_syscalls / calls,
            "system_share": used.system_ticks / ticks if ticks else 0.0,
        }
    seconds = sum(s.seconds for s in samples)
    busy = sum(sum(s.used[role].cpu_ns for role in s.used) for s in samples) / 1e9 / seconds
    return Figures(
        calls_per_s=statistics.median(s.calls / s.seconds for s in samples),
        p50_ms=_common.percentile(latencies, 50) * 1e3,
        p99_ms=_common.percentile(latencies, 99) * 1e3,
        calls=calls,
        per_call=per_call,
        per_window=[s.calls / s.seconds for s in samples],
        cpus_busy=busy,
    )


async def call_rounds(targets: list[Target], plan: Windows) -> dict[str, Figures]:
    samples: dict[str, list[Sample]] = {target.label: [] for target in targets}
    for number in range(plan.rounds):
        _common.progress(f"scale: calls, round {number + 1}/{plan.rounds} ...")
        shift = number % len(targets)
        for target in targets[shift:] + targets[:shift]:
            samples[target.label].append(await measure(target, plan))
    return {label: summarise(found) for label, found in samples.items()}


async def syscall_rounds(targets: list[Target], plan: Windows) -> dict[str, dict[str, float]] | str:
    """Syscalls per call by target and role, or why they could not be counted."""
    if _scale_proc.perf_path() is None:
        return "not available: perf not found"
    found = {}
    failed: list[Exception] = []
    for target in targets:
        _common.progress(f"scale: syscalls, {target.label} ...")
        try:
            found[target.label] = await traced(target, plan)
        except* RuntimeError as group:
            failed += group.exceptions
        if failed:
            return f"not available: {failed[0]}"
    return found


@dataclass(frozen=True)
class Calls:
    figures: dict[str, Figures]
    syscalls: dict[str, dict[str, float]] | str


async def calls(
    daemon: Any,
    names: list[str],
    plan: Windows,
    workdir: Path,
    others: dict[str, Any] | None = None,
    floor_batch: bool = False,
) -> Calls:
    """The loads on ``daemon`` (and on each of ``others`` by its label, whose
    windows take turns with the first's in the same rounds), beside the floor
    (and, with ``floor_batch``, a second floor whose echo processes are
    SCHED_BATCH, as drivebay's drivers are by default)."""
    async with contextlib.AsyncExitStack() as daemons:
        targets = []
        for name, each in {"drivebayd": daemon, **(others or {})}.items():
            clients = await daemons.enter_async_context(upgrade.connections(each, CONNECTIONS))
            targets += await drivebay_targets(each, clients, names, name)
        async with contextlib.AsyncExitStack() as stack:
            for label, batch in FLOORS[: 2 if floor_batch else 1] if plan.floor else ():
                _common.progress(f"scale: {label}: a relay and {len(names)} echo processes ...")
                ours, relay, echoes = stack.enter_context(
                    _scale_floor.floor(
                        floor_table(names), len(names), CONNECTIONS, workdir / label, batch
                    )
                )
                client = _scale_floor.Client(CONNECTIONS)
                stack.callback(client.close)
                await client.open(ours)
                targets += floor_targets(client, names, relay, echoes, label)
            figures = await call_rounds(targets, plan)
            syscalls = await syscall_rounds(targets, plan)
    return Calls(figures, syscalls)
