"""What the owner of a resource does through its actor for the queue.

``send_through`` puts a queued operation in the actor's mailbox (so it runs
in the actor's order, never beside a property change or a move) with its
queue id as ``op_id``, the owner's epoch, and a guard (the fence) that the
actor asks immediately before it writes the call to the driver process.
``apply_change`` applies a change of the resource's definition (``SET``,
``PIN``) in the actor. ``settling_of`` says how an operation a dead owner
sent is settled on the version the actor is bound to. Errors become the
failed ``Outcome`` one node would answer (same type name and message).
"""

from __future__ import annotations

from collections.abc import Callable

from drivebay.kernel.cluster.dispatch import Outcome, Send
from drivebay.kernel.cluster.driver_calls import DriverCalls
from drivebay.kernel.cluster.queue_statements import CHANGES, SET
from drivebay.kernel.cluster.repository import QueuedOperation
from drivebay.kernel.resources.actor import ResourceActor, Router
from drivebay.protocol.errors import DrivebayError, Fenced, OperationFailed, error_name


def failed(exc: DrivebayError) -> Outcome:
    """``exc`` as a failed operation's outcome: its name and message, as
    clients of one node see them."""
    message = exc.message if isinstance(exc, OperationFailed) else str(exc)
    return Outcome(ok=False, result={"type": error_name(exc), "message": message})


async def send_through(
    actor: ResourceActor, op: QueuedOperation, epoch: int, guard: Callable[[], bool]
) -> Outcome:
    """``op`` through ``actor``'s mailbox. Raises ``Fenced`` when ``guard``
    said no right before the send (nothing was sent)."""
    try:
        future = actor.submit(
            op.operation, op.args, None, op_id=str(op.id), epoch=epoch, guard=guard
        )
        return Outcome(ok=True, result=await future)
    except Fenced:
        raise
    except DrivebayError as exc:
        return failed(exc)


async def apply_change(actor: ResourceActor, op: QueuedOperation, router: Router) -> Outcome:
    """Apply ``SET`` (re-attach with the new properties) or ``PIN`` (move to
    the version ``router`` picks for the new pin) between two operations; a
    driver that refuses it leaves the actor as it was. Its result is the
    change itself, stored with it (``queue_statements.write_change``)."""
    try:
        if op.operation == SET:
            await actor.rebind(None, dict(op.args["properties"]))
        else:
            before, actor.pinned = actor.pinned, op.args["version"]
            try:
                await actor.rebind(await router(actor))
            except BaseException:
                actor.pinned = before
                raise
    except DrivebayError as exc:
        return failed(exc)
    return Outcome(ok=True, result=op.args)


def settling_of(actor: ResourceActor | None) -> tuple[frozenset[str], Send | None]:
    """The idempotent operations of the version ``actor`` is bound to (and
    the changes, which apply again alike), and its driver's
    ``reconcile_operation`` when the class has one (asked of the process
    holding the instance)."""
    slot = None if actor is None else actor.bound
    process = None if slot is None else slot.process
    if slot is None or process is None or not process.alive:
        return CHANGES, None
    calls = DriverCalls(process, slot.manifest.idempotent, slot.call_timeout)
    return calls.idempotent | CHANGES, calls.reconcile
