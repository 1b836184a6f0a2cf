"""Zero-loss handover of resources from one driver process to another.

Used for upgrades (a newer version), for config changes (same version, new
settings) and for pins. Preconditions: the new slot is RUNNING, which means
it passed its handshake and health check, so no operation can reach a
version that is not healthy. Then every actor bound to the old slot is asked
to rebind between two of its operations (detach on old, attach on new). If
any attach fails, every actor already moved is moved back, the new slot is
failed and stopped, and the old one keeps serving: nobody notices but the
log. Otherwise the old slot is drained (in-flight calls finish, instances
detach, the process exits 0) and stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from drivebay.kernel.drivers.slot import DriverSlot
from drivebay.kernel.resources.actor import ResourceActor

log = logging.getLogger("drivebay.handover")


@dataclass
class HandoverResult:
    ok: bool
    moved: int
    switch_s: float
    reason: str = ""


async def hand_over(
    old: DriverSlot, new: DriverSlot, actors: Iterable[ResourceActor], timeout: float
) -> HandoverResult:
    """Move ``actors`` from ``old`` to ``new``; roll back all of them on any failure."""
    moving = [actor for actor in actors if actor.bound is old or actor.bound is None]
    started = time.monotonic()
    log.info("handing %d resources over from %s to %s", len(moving), old.name, new.name)
    steps = {actor: actor.rebind_step(new) for actor in moving}
    failure = ""
    if steps:
        _, pending = await asyncio.wait([s.done for s in steps.values()], timeout=timeout)
        if pending:
            failure = f"{len(pending)} resources did not switch within {timeout:g}s"
    for actor, step in steps.items():
        step.withdrawn = True  # a step not yet run must never move its actor later
        if not failure and step.done.done() and step.done.exception() is not None:
            failure = f"attach of {actor.resource_id} failed: {step.done.exception()}"
    switch_s = time.monotonic() - started
    if not failure:
        log.info("%s: all %d resources switched in %.1f ms", new.name, len(moving), switch_s * 1e3)
        return HandoverResult(True, len(moving), switch_s)
    log.warning(
        "handover to %s failed (%s); moving every resource back to %s", new.name, failure, old.name
    )
    back = [actor.rebind(old) for actor in moving if actor.bound is new]
    if back:
        await asyncio.wait(back, timeout=timeout)
    return HandoverResult(False, 0, switch_s, failure)
