"""Running one resource's queued operations on the node that owns it.

``ResourceQueue.drain`` takes the resource's unfinished operations in their
order, one at a time, under the epoch this node holds, until none is left
(or ``more`` says to stop: the worker is ending): each is marked dispatched
and read in one guarded statement (``taking.take``), the fence is checked
immediately before the call is sent, and its result is written in one
guarded statement that also takes the next (``taking.finish``; the next is
taken apart when the fence is closed by then, or a test holds the fault
points). It stops at the first guard that fails (``Stop.LOST``: another
node owns the resource now) or when the fence is closed (``Stop.FENCED``),
without sending anything.

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

from drivebay.kernel.cluster.connection import loaded_json, stored_json
from drivebay.kernel.cluster.lease import Gate
from drivebay.kernel.cluster.queue_statements import CHANGES, requeue, write_change
from drivebay.kernel.cluster.repository import ClusterRepository, QueuedOperation
from drivebay.kernel.cluster.taking import Taken, finish, peek, take
from drivebay.protocol.errors import Fenced, OutcomeUnknown


class Outcome(msgspec.Struct, frozen=True):
    """What became of a call: its result, or (``ok`` False) its error."""

    ok: bool
    result: Any


def storable(op: QueuedOperation, outcome: Outcome) -> tuple[Outcome, msgspec.Raw]:
    """``outcome`` as its caller gets it on any node (the result as the
    queue stores it, read back), and its result as stored (JSON); a result
    JSON cannot hold (a msgpack extension type, NaN) becomes the error that
    says so, rather than a write that fails and leaves the operation
    dispatched."""
    try:
        stored = stored_json(outcome.result)
        return Outcome(outcome.ok, loaded_json(stored)), stored
    except TypeError as exc:
        error = {
            "type": "ResultNotStorable",
            "message": f"the result of {op.operation} cannot be stored in the cluster's queue "
            f"({exc}); the driver should return JSON-like values",
        }
        return Outcome(False, error), stored_json(error)


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
        fence: Gate,
        send: Send,
        *,
        reconcile: Send | None = None,
        idempotent: frozenset[str] = frozenset(),
        fault: FaultPoint | None = None,
        recorded: Recorded | None = None,
        more: Callable[[], bool] | None = None,
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
        self._more = more or (lambda: True)

    async def drain(self) -> Stop:
        """Run the unfinished operations, in order, until none is left (or
        ``more`` says to stop taking); returns why it stopped."""
        step = await self._next()
        while isinstance(step, Taken):
            if step.op is None:
                return Stop.DONE
            step = await (self._run(step.op) if step.marked else self._settle(step.op))
        return step

    async def _next(self) -> Stop | Taken:
        """The first unfinished operation, marked dispatched when it was
        queued (``taking.take``), the fence checked first."""
        if not self._more():
            return Stop.DONE
        if not self._fence.may_dispatch():
            return Stop.FENCED
        db, me = self._repository.db, self._repository.node_id
        if self._fault is not None:  # a test's hold before the mark: which one it will be
            head = await peek(db, self.resource_id)
            if head is None:  # an operation queued from now on is taken at its wake, held first
                return Stop.DONE
            if head.state == "queued":
                await self._at("dispatch", head)
        taken = await take(db, me, self.resource_id, self.epoch)
        return taken if taken.held else Stop.LOST

    async def _run(self, op: QueuedOperation) -> Stop | Taken:
        """``op``, just marked dispatched: the fence immediately before the send."""
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

    async def _settle(self, op: QueuedOperation) -> Stop | Taken:
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

    async def _record(self, op: QueuedOperation, outcome: Outcome) -> Stop | Taken:
        """Write ``op``'s result and, in the same statement, take the next
        operation (unless a test holds the dispatch points, the fence is
        closed, or ``more`` says to stop: then the next is taken apart)."""
        await self._at("result", op)
        db, me = self._repository.db, self._repository.node_id
        outcome, stored = storable(op, outcome)
        taken: Taken | None = None
        if op.operation in CHANGES and outcome.ok:  # the new definition with the result
            written = await write_change(db, me, op.id, self.resource_id, self.epoch, op.args)
        else:
            together = self._fault is None and self._more() and self._fence.may_dispatch()
            taken = await finish(
                db,
                me,
                op.id,
                self.resource_id,
                self.epoch,
                ok=outcome.ok,
                result=stored,
                take=together,
                notify_me=self._recorded is None,
            )
            written = taken is not None
            if not together:
                taken = None
        if not written:
            return Stop.LOST
        if self._recorded is not None:
            self._recorded(op.id, outcome)
        if taken is None:
            return await self._next()
        return taken if taken.held else Stop.LOST

    async def _at(self, point: str, op: QueuedOperation) -> None:
        if self._fault is not None:
            await self._fault(point, op)
