"""Zero-loss handover of resources from one driver process to another.

Used for upgrades (a newer version), for config changes (same version, new
settings) and for pins. Preconditions: the new slot is RUNNING, which means
it passed its handshake and health check, so no operation can reach a
version that is not healthy. Then every actor bound to the old slot is asked
to rebind between two of its operations (detach on old, attach on new; or,
when both driver classes can, ``handoff`` on old and ``takeover`` on new:
``state_move``, a window of them at a time, ``move_window``). If any move
fails, every actor already moved is moved back (with its state, the same
way; the log names them), the new slot is failed and stopped, and the old
one keeps serving: nobody notices but the log. Otherwise the old slot is
drained (in-flight calls finish, instances detach, the process exits 0) and
stopped.

Each handover is told to the event ring: ``upgrade.started``, then
``upgrade.switched`` or ``upgrade.rolled_back`` (``upgrade.finished`` is the
kernel's, once the old version is stopped).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivebay.kernel.drivers.move_window import MoveWindow
from drivebay.kernel.drivers.slot import DriverSlot
from drivebay.kernel.drivers.state_move import Plan, plan
from drivebay.kernel.resources.actor import Rebind, ResourceActor

if TYPE_CHECKING:
    from drivebay.kernel.events import EventLog

log = logging.getLogger("drivebay.handover")


@dataclass
class HandoverResult:
    ok: bool
    moved: int
    switch_s: float
    reason: str = ""


async def hand_over(
    old: DriverSlot,
    new: DriverSlot,
    actors: Iterable[ResourceActor],
    timeout: float,
    events: EventLog | None,
    window: int,
) -> HandoverResult:
    """Move ``actors`` from ``old`` to ``new``; roll back all of them on any failure.

    State moves (``handoff`` and ``takeover``) go a few at a time, as many
    as ``MoveWindow`` finds the processes answer quickly, at most ``window``
    (the daemon's ``handover_moves``); an actor not yet given its step
    serves on from ``old``. Moves by detach and attach, each two short round
    trips, are all in flight at once."""
    moving = [actor for actor in actors if actor.bound is old or actor.bound is None]
    started = time.monotonic()
    log.info("handing %d resources over from %s to %s", len(moving), old.name, new.name)
    driver, version = new.manifest.name, new.manifest.version
    if events is not None:
        began = {"from": old.manifest.version, "resources": len(moving)}
        events.emit("upgrade.started", driver=driver, version=version, data=began)
    steps: dict[ResourceActor, Rebind] = {}
    stateful = _moves_state(old, new)  # else two short round trips each: all at once
    width = MoveWindow(window if stateful else len(moving), adapts=stateful)
    failure = await _move_all(moving, new, steps, timeout, width)
    for step in steps.values():
        step.withdrawn = True  # a step not yet run must never move its actor later
    switch_s = time.monotonic() - started
    if not failure:
        endings = [actor.ending for actor in moving if actor.ending is not None]
        if endings:  # the old instances' detaches (the actors' tasks), before a drain
            await asyncio.wait(endings, timeout=timeout)
        log.info(
            "%s: all %d resources switched in %.1f ms (old instances detached after %.1f ms)",
            new.name,
            len(moving),
            switch_s * 1e3,
            (time.monotonic() - started) * 1e3,
        )
        if events is not None:
            switched = {"from": old.manifest.version, "moved": len(moving), "switch_s": switch_s}
            events.emit("upgrade.switched", driver=driver, version=version, data=switched)
        return HandoverResult(True, len(moving), switch_s)
    log.warning(
        "handover to %s failed (%s); moving every resource back to %s", new.name, failure, old.name
    )
    await _roll_back(old, new, steps, timeout)
    if events is not None:
        undone = {"to": old.manifest.version, "reason": failure}
        events.emit("upgrade.rolled_back", driver=driver, version=version, data=undone)
    return HandoverResult(False, 0, switch_s, failure)


def _moves_state(old: DriverSlot, new: DriverSlot) -> bool:
    """Will the resources move with their state (both classes' hooks allow it)?"""
    before, after = old.process, new.process
    if before is None or after is None:
        return False
    return plan(before.hooks, after.hooks) is Plan.STATE


async def _move_all(
    moving: list[ResourceActor],
    new: DriverSlot,
    steps: dict[ResourceActor, Rebind],
    timeout: float,
    window: MoveWindow,
) -> str:
    """Give each actor its step to ``new``, ``window.width`` at a time (an
    actor not yet given one serves on from the old version, unstalled); the
    failure (empty: none). On the first failure no further step is given,
    and those given are waited for (a move under way is never left half seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waiting = collections.deque(moving)
    running: set[asyncio.Future[None]] = set()
    began: dict[asyncio.Future[None], float] = {}
    failure = ""
    while True:
        while waiting and not failure and len(running) < window.width:
            actor = waiting.popleft()
            step = steps[actor] = actor.rebind_step(new)
            running.add(step.done)
            began[step.done] = loop.time()
        if not running:
            return failure
        left = deadline - loop.time()
        done, running = (
            await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if left > 0
            else (set(), running)
        )
        if not done:
            return (
                failure
                or f"{len(running) + len(waiting)} resources did not switch within {timeout:g}s"
            )
        now = loop.time()
        for finished in done:
            window.ended(now - began[finished], now)
            if not failure and finished.exception() is not None:
                actor = next(a for a, s in steps.items() if s.done is finished)
                failure = f"{actor.resource_id} did not move: {finished.exception()}"


async def _roll_back(
    old: DriverSlot, new: DriverSlot, steps: dict[ResourceActor, Rebind], timeout: float
) -> None:
    """Every actor that moved (or may still be moving) goes back to ``old``,
    its state with it; the log names each one handed back."""
    back = {
        actor: actor.rebind(old)
        for actor, step in steps.items()
        if actor.bound is new or not step.done.done()
    }
    if back:
        await asyncio.wait(back.values(), timeout=timeout)
        endings = [actor.ending for actor in back if actor.ending is not None]
        if endings:  # the new process's instances detached before it is stopped
            await asyncio.wait(endings, timeout=timeout)
    returned: list[str] = []
    stuck: list[str] = []
    for actor, going in back.items():
        moved = steps[actor].done
        if not (moved.done() and moved.exception() is None):
            continue  # its move had failed: it never left the old version
        home = actor.bound is old and going.done() and going.exception() is None
        (returned if home else stuck).append(actor.resource_id)
    if returned:
        log.warning(
            "%s: handed %d resources back to %s: %s",
            new.name,
            len(returned),
            old.name,
            ", ".join(returned),
        )
    if stuck:
        log.error(
            "%s: %d resources did not come back to %s: %s",
            new.name,
            len(stuck),
            old.name,
            ", ".join(stuck),
        )
