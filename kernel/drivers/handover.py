"""Zero-loss handover of resources from one driver process to another.

Used for upgrades (a newer version), for config changes (same version, new
settings) and for pins. Preconditions: the new slot is RUNNING, which means
it passed its handshake and health check, so no operation can reach a
version that is not healthy. Then every actor bound to the old slot is asked
to rebind between two of its operations (detach on old, attach on new; or,
when both driver classes can, ``handoff`` on old and ``takeover`` on new:
``state_move``). If any move fails, every actor already moved is moved back
(with its state, the same way), the new slot is
failed and stopped, and the old one keeps serving: nobody notices but the
log. Otherwise the old slot is drained (in-flight calls finish, instances
detach, the process exits 0) and stopped.

Each handover is told to the event ring: ``upgrade.started``, then
``upgrade.switched`` or ``upgrade.rolled_back`` (``upgrade.finished`` is the
kernel's, once the old version is stopped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivebay.kernel.drivers.slot import DriverSlot
from drivebay.kernel.resources.actor import ResourceActor

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
    events: EventLog | None = None,
) -> HandoverResult:
    """Move ``actors`` from ``old`` to ``new``; roll back all of them on any failure."""
    moving = [actor for actor in actors if actor.bound is old or actor.bound is None]
    started = time.monotonic()
    log.info("handing %d resources over from %s to %s", len(moving), old.name, new.name)
    driver, version = new.manifest.name, new.manifest.version
    if events is not None:
        began = {"from": old.manifest.version, "resources": len(moving)}
        events.emit("upgrade.started", driver=driver, version=version, data=began)
    steps = {actor: actor.rebind_step(new) for actor in moving}
    failure = ""
    if steps:
        _, pending = await asyncio.wait([s.done for s in steps.values()], timeout=timeout)
        if pending:
            failure = f"{len(pending)} resources did not switch within {timeout:g}s"
    for actor, step in steps.items():
        step.withdrawn = True  # a step not yet run must never move its actor later
        if not failure and step.done.done() and step.done.exception() is not None:
            failure = f"{actor.resource_id} did not move: {step.done.exception()}"
    switch_s = time.monotonic() - started
    if not failure:
        log.info("%s: all %d resources switched in %.1f ms", new.name, len(moving), switch_s * 1e3)
        if events is not None:
            switched = {"from": old.manifest.version, "moved": len(moving), "switch_s": switch_s}
            events.emit("upgrade.switched", driver=driver, version=version, data=switched)
        return HandoverResult(True, len(moving), switch_s)
    log.warning(
        "handover to %s failed (%s); moving every resource back to %s", new.name, failure, old.name
    )
    back = [actor.rebind(old) for actor in moving if actor.bound is new]
    if back:
        await asyncio.wait(back, timeout=timeout)
    if events is not None:
        undone = {"to": old.manifest.version, "reason": failure}
        events.emit("upgrade.rolled_back", driver=driver, version=version, data=undone)
    return HandoverResult(False, 0, switch_s, failure)
