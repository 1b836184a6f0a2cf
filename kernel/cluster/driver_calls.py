"""A resource queue's calls to a real driver process (``dispatch.Send``).

``DriverCalls.send`` runs a queued operation in the driver process with the
queue's id as its ``op_id`` and the owner's epoch; ``reconcile`` (None when the
driver class has no ``reconcile_operation``) asks the driver what became of one
a node sent and did not see the end of; ``idempotent`` is the driver version's
manifest list. A driver's error, or a call the process refuses (arguments
holding ``op_id``), becomes a failed ``Outcome`` (the type and message
clients see), as a single node answers it.

In ``drivebayd`` the queue workers send through the resource actors
instead (``book.send_through``); ``ClusterBook.settling`` gives them
``reconcile`` and ``idempotent`` of the version a resource is bound to.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from drivebay.kernel.cluster.dispatch import Outcome, Send
from drivebay.kernel.cluster.repository import QueuedOperation
from drivebay.kernel.drivers.process import DriverProcess
from drivebay.protocol.errors import DriverError, OperationFailed, RequestError, error_name


def op_id_of(op: QueuedOperation) -> str:
    """A queued operation's ``op_id``: its id in the cluster's queue, the same
    on every node and every run (a re-run after a takeover too)."""
    return str(op.id)


class DriverCalls:
    """The calls to ``process`` for one driver version's resource queues."""

    def __init__(
        self,
        process: DriverProcess,
        idempotent: tuple[str, ...] | frozenset[str] = (),
        timeout: float | None = None,
    ) -> None:
        self._process = process
        self._timeout = timeout
        self.idempotent = frozenset(idempotent)

    async def send(self, op: QueuedOperation, epoch: int) -> Outcome:
        call = self._process.call(
            op.resource_id, op.operation, op.args, self._timeout, op_id=op_id_of(op), epoch=epoch
        )
        return await _outcome(call)

    @property
    def reconcile(self) -> Send | None:
        """``_reconcile`` when the driver class has ``reconcile_operation``."""
        return self._reconcile if self._process.can_reconcile else None

    async def _reconcile(self, op: QueuedOperation, epoch: int) -> Outcome:
        asked = self._process.reconcile(
            op.resource_id,
            op_id_of(op),
            op.operation,
            op.args,
            epoch=epoch,
            timeout=self._timeout,
        )
        return await _outcome(asked)


async def _outcome(call: Awaitable[Any]) -> Outcome:
    try:
        return Outcome(ok=True, result=await call)
    except (DriverError, RequestError) as exc:  # RequestError: arguments holding op_id
        message = exc.message if isinstance(exc, OperationFailed) else str(exc)
        return Outcome(ok=False, result={"type": error_name(exc), "message": message})
