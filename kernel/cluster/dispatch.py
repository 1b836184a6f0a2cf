"""Running one resource's queued operations on the node that owns it.

``ResourceQueue.drain`` takes the resource's unfinished operations in their
order, one at a time, under the epoch this node holds: each is marked
dispatched (a guarded write), the fence is checked immediately before the
call is sent, and its result is written (a guarded write). It stops at the
first guard that fails (``Stop.LOST``: another node owns the resource now)
or when the fence is closed (``Stop.FENCED``), without sending anything.

An operation found dispatched under another epoch (its node died, or was
fenced, between the dispatch mark and the result) is settled first, by
``settle_rule``: re-run when the manifest lists it as idempotent, asked of
the driver's ``reconcile_operation`` when it has one, otherwise failed with
``OutcomeUnknown``, never silently re-run.

``send`` (in ``drivebayd``, through the resource's actor) raises ``Fenced``
when the fence closed before the call was written to the driver: nothing
was sent, so the operation is put back to queued under the epoch's guard
(``queue_statements.requeue``) for the next owner to run, not to settle.
A change of the resource's definition (``queue_statements.CHANGES``) that
took is written with its result in one statement (``write_change``).
``recorded`` hears of each result written (the node answers the calls it
accepted itself without waiting for the notification). ``fault`` lets a
test hold a dispatch at a named point (a pause of the node that lands
exactly there).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from drivebay.kernel.cluster.lease import Fence
from drivebay.kernel.cluster.queue_statements import CHANGES, requeue, write_change
from drivebay.kernel.cluster.repository import ClusterRepository, QueuedOperation
from drivebay.protocol.errors import Fenced, OutcomeUnknown


class Outcome(msgspec.Struct, frozen=True):
    """What became of a call: its result, or (``ok`` False) its error."""

    ok: bool
    result: Any


Send = Callable[[QueuedOperation, int], Awaitable[Outcome]]  # (operation, epoch)
# A test's hold at a named point of a dispatch: "dispatch" (before the dispatch
# mark is committed), "send" (after it, before the fence check and the send),
# "result" (before the result is written). None in production.
FaultPoint = Callable[[str, QueuedOperation], Awaitable[None]]
Recorded = Callable[[int, "Outcome"], None]  # (operation id, its outcome), once written


class Settle(enum.Enum):
    RERUN = "rerun"  # idempotent: sending it again has the same effect as once
    RECONCILE = "reconcile"  # ask the driver what became of it
    UNKNOWN = "unknown"  # fail it with OutcomeUnknown


class Stop(enum.Enum):
    DONE = "done"  # nothing left in the queue
    LOST = "lost"  # a guarded write changed nothing: another node owns it now
    FENCED = "fenced"  # this node may not dispatch now


def settle_rule(operation: str, idempotent: frozenset[str], can_reconcile: bool) -> Settle:
    """How a new owner settles ``operation``, dispatched by a node that did
    not write its result."""
    if operation in idempotent:
        return Settle.RERUN
    if can_reconcile:
        return Settle.RECONCILE
    return Settle.UNKNOWN


def outcome_unknown(op: QueuedOperation) -> Outcome:
    return Outcome(
        ok=False,
        result={
            "type": OutcomeUnknown.__name__,
            "message": f"operation {op.operation} (#{op.id}) on {op.resource_id} was sent by a "
            "node that stopped before its result was recorded; check the resource, and list "
            "the operation as idempotent or give the driver reconcile_operation to settle it",
        },
    )


class ResourceQueue:
    """The queue of one resource this node holds under ``epoch``."""

    def __init__(
        self,
        repository: ClusterRepository,
        resource_id: str,
        epoch: int,
        fence: Fence,
        send: Send,
        *,
        reconcile: Send | None = None,
        idempotent: frozenset[str] = frozenset(),
        fault: FaultPoint | None = None,
        recorded: Recorded | None = None,
    ) -> None:
        self.resource_id = resource_id
        self.epoch = epoch
        self._repository = repository
        self._fence = fence
        self._send = send
        self._reconcile = reconcile
        self._idempotent = idempotent
        self._fault = fault
        self._recorded = recorded

    async def drain(self) -> Stop:
        """Run every unfinished operation, in order; returns why it stopped."""
        for op in await self._repository.open_operations(self.resource_id):
            if not self._fence.may_dispatch():
                return Stop.FENCED
            if op.state == "dispatched":
                stop = await self._settle(op)
            else:
                stop = await self._run(op)
            if stop is not None:
                return stop
        return Stop.DONE

    async def _run(self, op: QueuedOperation) -> Stop | None:
        await self._at("dispatch", op)
        if not await self._repository.mark_dispatched(op.id, self.resource_id, self.epoch):
            return Stop.LOST
        await self._at("send", op)
        if not self._fence.may_dispatch():  # immediately before the send
            return Stop.FENCED
        try:
            outcome = await self._send(op, self.epoch)
        except Fenced:  # refused at the last check: never sent, so it runs later, once
            await requeue(
                self._repository.db, self._repository.node_id, op.id, self.resource_id, self.epoch
            )
            return Stop.FENCED
        return await self._record(op, outcome)

    async def _settle(self, op: QueuedOperation) -> Stop | None:
        if op.dispatched_epoch != self.epoch and not await self._repository.redispatch(
            op.id, self.resource_id, self.epoch
        ):
            return Stop.LOST
        rule = settle_rule(op.operation, self._idempotent, self._reconcile is not None)
        if rule is Settle.UNKNOWN:
            return await self._record(op, outcome_unknown(op))
        if not self._fence.may_dispatch():
            return Stop.FENCED
        call = self._send if rule is Settle.RERUN else self._reconcile
        assert call is not None
        try:
            outcome = await call(op, self.epoch)
        except Fenced:  # left dispatched: whoever owns it next settles it again
            return Stop.FENCED
        return await self._record(op, outcome)

    async def _record(self, op: QueuedOperation, outcome: Outcome) -> Stop | None:
        await self._at("result", op)
        if op.operation in CHANGES and outcome.ok:  # the new definition with the result
            written = await write_change(
                self._repository.db,
                self._repository.node_id,
                op.id,
                self.resource_id,
                self.epoch,
                op.args,
            )
        else:
            written = await self._repository.write_result(
                op.id, self.resource_id, self.epoch, ok=outcome.ok, result=outcome.result
            )
        if not written:
            return Stop.LOST
        if self._recorded is not None:
            self._recorded(op.id, outcome)
        return None

    async def _at(self, point: str, op: QueuedOperation) -> None:
        if self._fault is not None:
            await self._fault(point, op)
