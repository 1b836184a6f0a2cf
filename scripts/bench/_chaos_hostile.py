"""The hostile driver of ``chaos.py``: every wrong thing a driver can do, one after another.

One resource of the driver (the *victim*, outside the load) is asked to do
each act while the other resources carry the load; the same process serves
both, so the load's calls see what the act does to it. An act that ends
the process (a crash, garbage on the channel, a hung loop) is timed from the
request to the driver RUNNING in another process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from _chaos_load import error_type
from _chaos_scene import Scene

from drivebay.client import OperationError


@dataclass(frozen=True)
class HostilePlan:
    flood_mb: int  # to stdout and to stderr each
    bomb: int  # processes of the process bomb
    spin_s: float  # CPU spin on the loop: over the ping timeout
    warm_s: float
    tail_s: float


def victim(scene: Scene) -> str:
    return f"{scene.driver}-victim"


async def hostile_driver(scene: Scene, plan: HostilePlan) -> None:
    await scene.daemon.admin.request("resource-add", {"id": victim(scene), "driver": scene.driver})
    await asyncio.sleep(plan.warm_s)
    acts: list[tuple[str, str, dict[str, Any], bool]] = [
        ("output flood", "flood", {"megabytes": plan.flood_mb}, False),
        ("memory bomb", "hog", {}, False),
        ("process bomb, then exit", "spawn", {"count": plan.bomb}, True),
        ("descriptor bomb", "open_all", {}, False),
        ("garbage on the channel", "garbage", {}, True),
        ("CPU spin on the loop", "spin", {"seconds": plan.spin_s}, True),
        ("setsid grandchild, then exit", "spawn", {"count": 1, "setsid": True}, True),
    ]
    for label, op, args, ends in acts:
        await _act(scene, label, op, args, ends)
    await asyncio.sleep(plan.tail_s)


async def _act(scene: Scene, label: str, op: str, args: dict[str, Any], ends: bool) -> None:
    row = await scene.running_row()
    pid = row["pid"]
    client = scene.daemon.admin
    start = time.perf_counter()
    try:
        result = await client.call(victim(scene), op, args, timeout=60)
        outcome = "OK" if not isinstance(result, list) else f"OK, {len(result)} pids"
    except OperationError as exc:
        outcome = error_type(str(exc), exc.code)
    took_ms = (time.perf_counter() - start) * 1e3
    if op == "spawn":  # the process ends after its children are out
        try:
            await client.call(victim(scene), "crash", {}, timeout=60)
        except OperationError as exc:
            outcome += f", exit: {error_type(str(exc), exc.code)}"
    if ends:
        await scene.wait_running({pid}, start)
        scene.note(f"{label}: {outcome}; RUNNING again after {scene.recoveries_ms[-1]:,.0f} ms")
    else:
        scene.note(f"{label}: {outcome} in {took_ms:,.0f} ms")
