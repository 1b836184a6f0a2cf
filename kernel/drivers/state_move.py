"""Moving one resource's instance to another, state and sockets included.

``plan`` is the decision, a pure function of which hooks each side's driver
class defines: the state moves only when the old one has ``handoff`` and the
new one ``takeover``; without ``handoff`` the new instance gets ``attach``
as it always did; a ``handoff`` with no ``takeover`` to receive it is not
called, and the log says the state is dropped (the old instance is detached,
the new one attached).

``move_state`` carries a move out between two driver processes (or within
one, for a property change): ``handoff`` on the old instance, which is set
aside still holding its sockets; the state and the kernel's copies of the
descriptors to the new process; its ``takeover``; and only then the old
instance's ``detach``. ``hand_state`` is the move up to the takeover and
``end_handoff`` the detach: the actors end their stall with the first and
own the second as a task of its own. If anything fails before the takeover returned, the
old instance gets ``handoff_aborted`` and serves on, and the kernel's
copies are closed (always, success or not). Used by the resource actors
(upgrades, pins, rollbacks, property changes) and ``drivebay.testing``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from drivebay.protocol.errors import DriverError, HandoverFailed
from drivebay.sandbox.bundle_errors import shown

if TYPE_CHECKING:
    from drivebay.kernel.drivers.process import DriverProcess

log = logging.getLogger("drivebay.handover")


class Plan(enum.Enum):
    STATE = "state"  # handoff on the old, takeover on the new
    ATTACH = "attach"  # no state to move: detach the old, attach the new
    DROP = "drop"  # a state nobody can take: detach, attach, and say so


def plan(old_hooks: Collection[str], new_hooks: Collection[str]) -> Plan:
    """How an instance of a class with ``old_hooks`` moves to one with ``new_hooks``."""
    if "handoff" not in old_hooks:
        return Plan.ATTACH
    if "takeover" not in new_hooks:
        return Plan.DROP
    return Plan.STATE


async def move_state(
    old: DriverProcess,
    new: DriverProcess,
    resource_id: str,
    properties: dict[str, Any],
    from_version: str,
) -> None:
    """Hand ``resource_id``'s instance in ``old`` over to a new one in ``new``.

    Raises HandoverFailed (with the reason) when the state did not move; the
    old instance then serves on. Once this returns, the old instance is
    detached (a failing ``detach`` is only logged: the move is done)."""
    await hand_state(old, new, resource_id, properties, from_version)
    await end_handoff(old, resource_id)


async def hand_state(
    old: DriverProcess,
    new: DriverProcess,
    resource_id: str,
    properties: dict[str, Any],
    from_version: str,
) -> None:
    """``move_state`` up to the new instance's ``takeover`` returning: the
    resource is served by ``new`` from then on, and the old instance, set
    aside with its sockets, waits for ``end_handoff`` (its ``detach``)."""
    try:
        handed = await old.handoff(resource_id)
    except BaseException as exc:
        await _abort(old, resource_id)
        raise _failed(exc, f"handoff of {resource_id} on {old.name}") from exc
    try:
        await new.takeover(resource_id, properties, handed, from_version)
    except BaseException as exc:
        await _abort(old, resource_id)
        raise _failed(exc, f"takeover of {resource_id} on {new.name}") from exc
    finally:
        handed.close()  # the kernel's copies: the new process holds its own now, or none


async def end_handoff(old: DriverProcess, resource_id: str) -> None:
    """The old instance's ``detach`` after its state was taken over; a
    failure is only logged (the move is done)."""
    try:
        await old.handoff_end(resource_id, taken=True)
    except DriverError as exc:
        log.warning("%s: detach from %s after its handoff failed: %s", resource_id, old.name, exc)
    except Exception:  # run as a task of its own: nothing may be left unretrieved
        log.exception("%s: detach from %s after its handoff failed", resource_id, old.name)


def _failed(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, HandoverFailed):
        return exc
    if isinstance(exc, Exception):
        return HandoverFailed(f"{what} failed: {shown(str(exc))}")
    return exc  # a cancellation goes on as it is


async def _abort(old: DriverProcess, resource_id: str) -> None:
    """The old instance takes its resource back (``handoff_aborted``); done
    even when the caller is being cancelled, so it is never left set aside."""
    ending = asyncio.ensure_future(old.handoff_end(resource_id, taken=False))
    ending.add_done_callback(_consume)
    try:
        await asyncio.shield(ending)
    except asyncio.CancelledError:
        await asyncio.wait([ending], timeout=old.timeouts.call_s)
        raise
    except DriverError as exc:
        log.warning("%s: handoff_aborted on %s failed: %s", resource_id, old.name, exc)


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
