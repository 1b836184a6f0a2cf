"""The crash attacks of ``chaos.py``: kill storms, frozen processes, ``kill -9`` of the daemon.

Each is the body of a scene (``_chaos_scene``): the driver is under load
while the attack runs, and every recovery is timed from the signal to the
status showing the driver RUNNING in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass

import _common
from _chaos_daemon import signal_tree, tree
from _chaos_scene import Scene


@dataclass(frozen=True)
class CrashPlan:
    kills: int  # at least, in the storm
    storm_calls: int  # at least, during the storm
    storm_max_s: float  # the storm ends here, met or not
    gap_s: float  # least time RUNNING before the next kill (over restart.startsecs)
    spare_wait_s: float  # longest wait for the spare before a kill
    warm_s: float  # load before an attack
    tail_s: float  # load after it
    stops: int  # SIGSTOPs of the driver


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


async def kill_storm(scene: Scene, plan: CrashPlan) -> None:
    """``kill -9`` of the driver, again and again, while the calls go on."""
    await asyncio.sleep(plan.warm_s)
    tally, kills = scene.load.tally, 0
    end = time.monotonic() + plan.storm_max_s
    while kills < plan.kills or len(tally) < plan.storm_calls:
        if time.monotonic() > end:
            scene.note(f"storm cut at {plan.storm_max_s:g} s: {kills} kills, {len(tally):,} calls")
            break
        row = await scene.wait_spare(plan.spare_wait_s) or await scene.running_row()
        await asyncio.sleep(max(0.0, plan.gap_s - (row["uptime_s"] or 0.0)))
        pid = row["pid"]
        killed = time.perf_counter()
        _signal(pid, signal.SIGKILL)
        await scene.wait_running({pid}, killed)
        kills += 1
        if kills % 10 == 0:
            _common.progress(f"chaos: kill_storm: {kills} kills, {len(tally):,} calls")
    scene.note(f"{kills} kills under {len(tally):,} calls")
    await asyncio.sleep(plan.tail_s)


async def sigstop_driver(scene: Scene, plan: CrashPlan) -> None:
    """SIGSTOP of the driver (and whatever runs under it): its pings go
    unanswered, it must be replaced."""
    await asyncio.sleep(plan.warm_s)
    for _ in range(plan.stops):
        row = await scene.wait_spare(plan.spare_wait_s) or await scene.running_row()
        pid = row["pid"]
        frozen = tree(pid)
        stopped = time.perf_counter()
        signal_tree(frozen, signal.SIGSTOP)
        try:
            await scene.wait_running({pid}, stopped)
        finally:
            signal_tree(frozen, signal.SIGCONT)
        await asyncio.sleep(plan.gap_s)
    await asyncio.sleep(plan.tail_s)


async def sigstop_spare(scene: Scene, plan: CrashPlan) -> None:
    """SIGSTOP of the warm spare, then ``kill -9`` of the driver: the frozen spare
    must not stand in the way of a fresh start."""
    await asyncio.sleep(plan.warm_s)
    for _ in range(plan.stops):
        row = await scene.wait_spare(30.0)
        if row is None:
            raise RuntimeError(f"{scene.driver}: no spare within 30 s")
        pid, spare = row["pid"], row["spare_pid"]
        frozen = tree(spare)
        signal_tree(frozen, signal.SIGSTOP)
        killed = time.perf_counter()
        _signal(pid, signal.SIGKILL)
        try:
            await scene.wait_running({pid, spare}, killed)
        finally:
            signal_tree(frozen, signal.SIGCONT)
        await asyncio.sleep(plan.gap_s)
    await asyncio.sleep(plan.tail_s)


async def daemon_kill(scene: Scene, plan: CrashPlan) -> None:
    """``kill -9`` of the daemon mid-load, and a restart. The driver has a helper
    child and one in a session of its own: none may outlive the daemon's death."""
    daemon = scene.daemon
    helper = scene.resources[0]
    client = scene.load.client_of(helper)
    for setsid in (False, True):
        await client.call(helper, "spawn", {"count": 1, "setsid": setsid})
    await asyncio.sleep(plan.warm_s)
    row = await scene.running_row()
    old = {row["pid"], row.get("spare_pid")} - {None}
    await scene.probe.pause()
    killed = time.perf_counter()
    daemon.kill()
    await daemon.wait_exit()
    await daemon.start()
    scene.probe.client = daemon.admin
    scene.probe.paused = False
    scene.load.resume(await daemon.connections(len(scene.load.clients)))
    await scene.wait_running(old, killed)
    await asyncio.sleep(plan.tail_s)
