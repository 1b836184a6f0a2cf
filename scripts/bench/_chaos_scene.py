"""One attack of ``chaos.py`` as a scene: load, status probe, timings, and its figures.

``run_attack`` gives an attack a driver of a running daemon with resources
under load and a status probe, runs the attack's body, then waits for every
call, checks the driver's ledger, stops the driver and counts the processes
its drivers left. The result is one ``Figures`` row of the report.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import _common
from _chaos_daemon import Chaosd, processes_left
from _chaos_load import FAILED, OK, PENDING, Load, Tally, check_ledger

from drivebay.client import AsyncClient

STATUS_TIMEOUT_S = 5.0  # a status request unanswered this long counts as unanswered
PROBE_EVERY_S = 0.05
LEFT_GRACE_S = 3.0  # after a driver stopped, for its processes to go


@dataclass
class Figures:
    """One attack's row: the JSON keys of ``chaos.py --json``, and a few for the table."""

    accepted: int | None = None
    ok: int | None = None
    errors: dict[str, int] | None = None
    never_answered: int | None = None
    duplicated: int | None = None
    reordered: int | None = None
    ok_not_executed: int | None = None
    recovery_ms_p50: float | None = None
    recovery_ms_p99: float | None = None
    status_ms_p99: float | None = None
    status_unanswered: int | None = None
    rss_kb_before: int | None = None
    rss_kb_after: int | None = None
    fds_before: int | None = None
    fds_after: int | None = None
    processes_left: int | None = None
    # for the table only
    recovery_ms_max: float | None = None
    aborted: bool = False  # the attack could not go on to its end
    notes: list[str] = field(default_factory=list)


class StatusProbe:
    """``status`` over an already connected client, timed; every call counts."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.samples_ms: list[float] = []
        self.unanswered = 0
        self.paused = False
        self._between = asyncio.Event()  # set while no probe is in flight
        self._between.set()

    async def pause(self) -> None:
        """Stop probing, once the probe in flight (if any) has its answer: a
        daemon killed on purpose right after must not count against it."""
        self.paused = True
        await self._between.wait()

    async def ask(self, name: str | None = None) -> list[dict[str, Any]] | None:
        """The status rows (of driver ``name`` only), or None when unanswered."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(STATUS_TIMEOUT_S):
                rows: list[dict[str, Any]] = await self.client.request("status")
        except (TimeoutError, ConnectionError, OSError) as exc:
            self.unanswered += 1
            _common.progress(f"chaos: status unanswered: {type(exc).__name__}: {exc}")
            return None
        self.samples_ms.append((time.perf_counter() - start) * 1e3)
        return [r for r in rows if r["name"] == name] if name else rows

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.paused:
                self._between.clear()
                try:
                    await self.ask()
                finally:
                    self._between.set()
            await asyncio.sleep(PROBE_EVERY_S)


def running(row: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """RUNNING in a live process (status says RUNNING, pid None, between a
    process's death and its supervisor seeing it)."""
    return row is not None and row["state"] == "RUNNING" and row["pid"] is not None


@dataclass
class Scene:
    """What an attack's body works with."""

    daemon: Chaosd
    driver: str
    resources: list[str]
    load: Load
    probe: StatusProbe
    figures: Figures
    recoveries_ms: list[float] = field(default_factory=list)
    after: tuple[int | None, int | None] | None = None  # (rss kB, fds) taken by the body
    loading: asyncio.Task[None] | None = None
    changes_lost: int = 0  # changes answered OK, not in effect after a restart (disk_full)

    async def end_load(self) -> None:
        """Stop the load and wait for its calls (before the attack's end)."""
        self.load.stop()
        assert self.loading is not None
        await self.loading

    async def row(self) -> dict[str, Any] | None:
        rows = await self.probe.ask(self.driver)
        return next((r for r in rows if r["version"]), None) if rows else None

    async def wait_running(
        self, not_pids: set[int], since: float, deadline: float = 120.0
    ) -> dict[str, Any]:
        """Until the driver is RUNNING in a process not in ``not_pids``; the time
        from ``since`` (perf_counter) is kept as a recovery."""
        end = time.monotonic() + deadline
        while True:
            row = await self.row()
            if running(row) and row["pid"] not in not_pids:
                self.recoveries_ms.append((time.perf_counter() - since) * 1e3)
                return row
            if time.monotonic() > end:
                raise RuntimeError(f"{self.driver}: not RUNNING again within {deadline:g} s: {row}")
            await asyncio.sleep(0.002)

    async def running_row(self, deadline: float = 60.0) -> dict[str, Any]:
        """The status row once the driver is RUNNING in a live process."""
        end = time.monotonic() + deadline
        while not running(row := await self.row()):
            if time.monotonic() > end:
                raise RuntimeError(f"{self.driver}: not RUNNING within {deadline:g} s: {row}")
            await asyncio.sleep(0.01)
        return row

    async def wait_spare(self, deadline: float) -> dict[str, Any] | None:
        """The status row once the driver is RUNNING with a spare (None past the deadline)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            row = await self.row()
            if running(row) and row.get("spare_pid"):
                return row
            await asyncio.sleep(0.01)
        return None

    def note(self, text: str) -> None:
        self.figures.notes.append(text)
        _common.progress(f"chaos: {self.driver}: {text}")


Body = Callable[[Scene], Awaitable[None]]


async def add_resources(client: AsyncClient, driver: str, ids: list[str]) -> None:
    await asyncio.gather(
        *(client.request("resource-add", {"id": r, "driver": driver}) for r in ids)
    )


async def run_attack(
    daemon: Chaosd,
    driver: str,
    body: Body,
    resources: int,
    per_resource: int,
    connections: int,
    op: str = "record",
    call_timeout: float = 10.0,
) -> Figures:
    """Run ``body`` on ``driver`` of ``daemon`` under load; the figures."""
    ids = [f"{driver}-{n:03}" for n in range(resources)]
    figures = Figures()
    clients = await daemon.connections(connections)
    probe = StatusProbe(daemon.admin)
    tally = Tally(ids)
    load = Load(tally, clients, per_resource, op, call_timeout)
    scene = Scene(daemon, driver, ids, load, probe, figures)
    await add_resources(daemon.admin, driver, ids)
    figures.rss_kb_before, figures.fds_before = daemon.rss_kb(), daemon.fds()
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(probe.run(stop))
            scene.loading = loading = group.create_task(scene.load.run())
            try:
                await body(scene)
            except Exception as exc:  # the figures so far still count
                traceback.print_exc()
                scene.note(f"ABORTED: {type(exc).__name__}: {exc}")
                figures.aborted = True
            finally:
                if scene.after is None:
                    scene.after = (daemon.rss_kb(), daemon.fds())
                scene.load.stop()
                await loading
                stop.set()
    finally:
        for client in {*clients, *scene.load.clients}:
            await client.close()
    figures.rss_kb_after, figures.fds_after = scene.after
    _tally_figures(figures, tally, daemon.ledger(driver))
    figures.ok_not_executed = (figures.ok_not_executed or 0) + scene.changes_lost
    _recovery_figures(figures, scene.recoveries_ms)
    _status_figures(figures, probe)
    await stop_driver(daemon, driver)
    figures.processes_left = len(await processes_left({daemon.marker(driver)}, LEFT_GRACE_S))
    return figures


async def stop_driver(daemon: Chaosd, driver: str) -> None:
    """``drivebayctl stop DRIVER``; a failure is the figure's business, not a crash of ours."""
    try:
        async with asyncio.timeout(120):
            await daemon.admin.request("stop", {"names": [driver]})
    except Exception as exc:
        _common.progress(f"chaos: stop {driver}: {type(exc).__name__}: {exc}")


def _tally_figures(figures: Figures, tally: Tally, ledger: Path) -> None:
    check = check_ledger(ledger, tally)
    figures.accepted = len(tally)
    figures.ok = tally.count(OK)
    figures.errors = dict(sorted(tally.errors.items()))
    figures.never_answered = tally.count(PENDING)
    figures.duplicated = check.duplicated
    figures.reordered = check.reordered
    figures.ok_not_executed = check.ok_not_executed
    assert tally.count(FAILED) == sum(tally.errors.values())
    if check.unknown:
        figures.notes.append(f"{check.unknown} ledger lines name no call made")


def _recovery_figures(figures: Figures, recoveries_ms: list[float]) -> None:
    if recoveries_ms:
        ordered = sorted(recoveries_ms)
        figures.recovery_ms_p50 = round(_common.percentile(ordered, 50), 1)
        figures.recovery_ms_p99 = round(_common.percentile(ordered, 99), 1)
        figures.recovery_ms_max = round(ordered[-1], 1)


def _status_figures(figures: Figures, probe: StatusProbe) -> None:
    if probe.samples_ms:
        figures.status_ms_p99 = round(_common.percentile(sorted(probe.samples_ms), 99), 2)
    figures.status_unanswered = probe.unanswered
