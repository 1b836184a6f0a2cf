"""The resource book of a node with ``cluster:``: definitions in PostgreSQL,
calls through the cluster's queue, actors for the resources this node owns.

``ClusterBook`` has the face of ``ResourceBook`` that the control handlers
and the kernel use. Definitions (driver, pin, properties) live in the
cluster's ``resource`` table; the SQLite store keeps what else it holds
(versions that failed). ``actors`` holds only the resources this node owns:
its ``ClusterNode`` asks ``gained`` for one when it claims a resource (the
actor is made from the stored definition and attached at once, on the
version the kernel's router picks) and tells ``lost`` once the worker of a
resource it no longer owns has ended (its call in flight finished): the
actor is closed and its instance detached, a local clean-up only.

``call`` on any node enqueues (committed before anything is answered; the
owner is notified), wakes this node's worker when it owns the resource,
then waits for the result (``results.Results``). The owner's worker sends
through the resource's actor (``send``): in the actor's order, with the
queue id as ``op_id``, the epoch, and the fence asked immediately before
the call is written to the driver.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from drivebay.kernel.cluster.connection import Connection, connect
from drivebay.kernel.cluster.dispatch import Outcome
from drivebay.kernel.cluster.queue_statements import definition, enqueue_call, finished
from drivebay.kernel.cluster.repository import ClusterRepository, QueuedOperation
from drivebay.kernel.cluster.results import Results
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.kernel.resources.actor import ResourceActor, Router
from drivebay.kernel.resources.book import ResourceBook, SchemaLookup, checked_properties
from drivebay.kernel.resources.store import Resource, ResourceStore, check_resource_id
from drivebay.protocol.errors import (
    DriverError,
    Fenced,
    KernelError,
    OperationFailed,
    RequestError,
    error_name,
)

if TYPE_CHECKING:
    from drivebay.kernel.cluster.node import ClusterNode
    from drivebay.kernel.events import EventLog

log = logging.getLogger("drivebay.cluster")


class ClusterBook(ResourceBook):
    """A clustered node's resources; ``node`` is set once its ``ClusterNode`` runs."""

    def __init__(
        self,
        settings: ClusterSettings,
        call_timeout: float,
        store: ResourceStore,
        router: Router,
        schema: SchemaLookup,
        mailbox_size: int,
        wait_running_s: float,
        events: EventLog | None = None,
    ) -> None:
        super().__init__(store, router, schema, mailbox_size, wait_running_s, events)
        self.settings = settings
        self.node: ClusterNode | None = None
        self.results = Results(settings)
        self._call_timeout = call_timeout
        self._calls: set[asyncio.Task[Any]] = set()
        self._db: Connection | None = None
        self._db_lock = asyncio.Lock()

    # -- life ------------------------------------------------------------------------

    def restore(self) -> int:
        """Nothing to restore: actors come with ownership (``gained``)."""
        return 0

    async def close(self) -> None:
        for task in self._calls:
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        await super().close()
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def gained(self, resource_id: str) -> bool:
        """This node owns ``resource_id`` now: its actor, from the stored
        definition, attached at once. False when it is not stored any more."""
        async with asyncio.timeout(self.settings.renew_s):
            resource = await definition(await self._connection(), resource_id)
        if resource is None:
            return False
        if resource_id in self.actors:  # kept from before (should not happen): start afresh
            await self.lost(resource_id)
        actor = self._spawn_actor(resource)
        try:
            await actor.rebind(await self._router(actor))
        except Exception as exc:  # the next operation tries again, and says why
            log.warning("cluster: %s: could not attach: %s", resource_id, exc)
        return True

    async def lost(self, resource_id: str) -> None:
        """This node no longer owns ``resource_id`` and its worker has ended:
        close the actor and detach its instance (nothing is sent to the queue)."""
        actor = self.actors.pop(resource_id, None)
        if actor is not None:
            await actor.close(detach=True, reason="moved to another node")

    # -- the owner's side ----------------------------------------------------------

    async def send(self, op: QueuedOperation, epoch: int) -> Outcome:
        """Run ``op`` through its resource's actor (``dispatch.Send``).
        Raises ``Fenced`` when nothing was sent: the fence closed before the
        call reached the driver, or this node has no actor for it yet."""
        actor = self.actors.get(op.resource_id)
        node = self.node
        if actor is None or node is None:
            raise Fenced(f"resource {op.resource_id} has no actor on this node yet")
        return await send_through(actor, op, epoch, node.membership.fence.may_dispatch)

    # -- commands --------------------------------------------------------------------

    async def add(
        self, resource_id: str, driver: str, pinned: str | None, assignments: Sequence[str]
    ) -> Resource:
        """Validate (against the schema installed here), then store: the node
        that claims it attaches it."""
        manifest = self._schema(driver, pinned)
        check_resource_id(resource_id)
        properties = checked_properties(manifest, {}, assignments, resource_id)
        resource = Resource(id=resource_id, driver=driver, pinned=pinned, properties=properties)
        await self._repository(lambda r: r.add_resource(resource))
        self._tell("resource.added", resource, pinned=pinned, properties=sorted(properties))
        return resource

    async def remove(self, resource_id: str) -> None:
        """Delete it from the cluster (its operations with it; their callers
        are answered "removed"); the owner's actor closes at its next round."""
        await self._repository(lambda r: r.remove_resource(resource_id))
        self._tell("resource.removed", Resource(resource_id, ""))

    async def set(self, resource_id: str, assignments: Sequence[str]) -> Resource:
        raise RequestError("resource set is not available in a cluster yet")

    async def pin(self, resource_id: str, version: str | None) -> Resource:
        raise RequestError("resource pin is not available in a cluster yet")

    def call(
        self, resource_id: str, op: str, args: dict[str, Any], timeout: float | None
    ) -> asyncio.Future[Any]:
        """Queue the call in the cluster; the task's result is the operation's."""
        task = asyncio.get_running_loop().create_task(
            self._call(resource_id, op, args, timeout), name=f"cluster call {resource_id}"
        )
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return task

    async def _call(
        self, resource_id: str, op: str, args: dict[str, Any], timeout: float | None
    ) -> Any:
        try:
            async with asyncio.timeout(self.settings.renew_s):
                db = await self._connection()
                op_id = await enqueue_call(
                    db, self.settings.node_id, _lease(self.settings), resource_id, op, args
                )
        except (psycopg.Error, TimeoutError) as exc:
            self._drop_connection()
            reason = " ".join(str(exc).split()) or "no answer in time"
            raise KernelError(
                f"the call was not queued: the cluster database did not take it ({reason}); "
                "retry once it answers"
            ) from exc
        node = self.node
        if node is not None:
            node.wake(resource_id)
        limit = self._call_timeout if timeout is None else timeout
        return await self.results.wait(op_id, f"{op} on {resource_id}", limit, self._look)

    async def _look(self, op_id: int) -> Any:
        return await finished(await self._connection(), op_id)

    # -- the database ----------------------------------------------------------------

    async def _repository(self, act: Any) -> Any:
        async with asyncio.timeout(self.settings.renew_s):
            repository = ClusterRepository(
                await self._connection(), self.settings.node_id, self.settings.lease_s
            )
            try:
                return await act(repository)
            except psycopg.Error as exc:
                self._drop_connection()
                raise KernelError(
                    f"the cluster database did not take the change ({' '.join(str(exc).split())})"
                    "; retry once it answers"
                ) from exc

    async def _connection(self) -> Connection:
        async with self._db_lock:
            if self._db is not None and (self._db.closed or self._db.broken):
                await self._db.close()
                self._db = None
            if self._db is None:
                self._db = await connect(self.settings)
            return self._db

    def _drop_connection(self) -> None:
        if self._db is not None and self._db.broken:
            self._db = None


async def send_through(
    actor: ResourceActor, op: QueuedOperation, epoch: int, guard: Callable[[], bool]
) -> Outcome:
    """``op`` through ``actor``'s mailbox, in its order, with the queue id as
    ``op_id`` and ``epoch``; ``guard`` is asked immediately before the call
    is written to the driver. Raises ``Fenced`` when it said no (nothing was
    sent); any other error is the failed ``Outcome`` one node would answer."""
    try:
        future = actor.submit(
            op.operation, op.args, None, op_id=str(op.id), epoch=epoch, guard=guard
        )
        return Outcome(ok=True, result=await future)
    except Fenced:
        raise
    except (DriverError, RequestError) as exc:
        message = exc.message if isinstance(exc, OperationFailed) else str(exc)
        return Outcome(ok=False, result={"type": error_name(exc), "message": message})


def _lease(settings: ClusterSettings) -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.lease_s)
