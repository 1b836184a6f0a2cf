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
through the resource's actor (``send``, ``owner_side``): in the actor's
order, with the queue id as ``op_id``, the epoch, and the fence asked
immediately before the call is written to the driver. ``set`` and ``pin``
are queued as changes (``queue_statements.SET``, ``PIN``) that the owner's
actor applies. ``rows`` lists every resource from the database
(``book_rows``); ``run`` keeps that list fresh and runs the node's one
listening connection (``listener``: results here, queued operations to the
node's inbox).
The book's statements go over one connection of its own (``link``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from drivebay.kernel.cluster.book_rows import page_of, row_of
from drivebay.kernel.cluster.connection import Connection
from drivebay.kernel.cluster.dispatch import Outcome, Send
from drivebay.kernel.cluster.enqueuing import Enqueuer
from drivebay.kernel.cluster.lease import LeaseGate
from drivebay.kernel.cluster.link import Link
from drivebay.kernel.cluster.listener import Listener
from drivebay.kernel.cluster.owner_side import apply_change, send_through, settling_of
from drivebay.kernel.cluster.queue_statements import (
    CHANGES,
    PIN,
    SET,
    Finished,
    Listed,
    definition,
    finished,
    listing,
)
from drivebay.kernel.cluster.repository import ClusterRepository, QueuedOperation
from drivebay.kernel.cluster.results import Results
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.kernel.resources.actor import DriverAbsent, Router
from drivebay.kernel.resources.book import (
    ResourceBook,
    SchemaLookup,
    checked_properties,
    no_such_resource,
)
from drivebay.kernel.resources.store import Resource, ResourceStore, check_resource_id
from drivebay.protocol.errors import (
    Fenced,
    KernelError,
    OperationFailed,
    RequestError,
)
from drivebay.sandbox.bundles import Manifest

if TYPE_CHECKING:
    from drivebay.kernel.cluster.node import ClusterNode
    from drivebay.kernel.events import EventLog

log = logging.getLogger("drivebay.cluster")
T = TypeVar("T")


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
        # (driver, pinned version) -> does it run here, or come back by itself?
        self.serving: Callable[[str, str | None], bool] = lambda driver, pinned: True
        self.results = Results(settings)
        self.listener = Listener(settings, self.results)  # this node's one LISTEN (``run``)
        self._call_timeout = call_timeout
        self.leave_after_s = 0.0  # how long callers may wait at shutdown (daemon's drain_s)
        self._answer_until: float | None = None  # loop time: the end of that wait, once begun
        self._calls: set[asyncio.Task[Any]] = set()
        self._link = Link(settings)
        self._enqueuer = Enqueuer(
            self._link.run, settings.node_id, _lease(settings), wakes_itself=False
        )
        self._listed: list[Listed] = []  # every resource, as last read
        self._drivers: dict[str, str] = {}  # resource -> driver, as last read

    # -- life ------------------------------------------------------------------------

    def restore(self) -> int:
        """Nothing to restore: actors come with ownership (``gained``)."""
        return 0

    async def answered(self) -> None:
        """At shutdown: returns once no caller waits any more, at most
        ``leave_after_s`` after the first time it was called; at once when
        no caller waits."""
        now = asyncio.get_running_loop().time()
        if self._answer_until is None:
            self._answer_until = now + self.leave_after_s
        if self._calls and self._answer_until > now:
            await asyncio.wait(set(self._calls), timeout=self._answer_until - now)

    async def close(self) -> None:
        """The callers still waiting (their operations queued, some run by
        other nodes) get their results (``answered``: the daemon waits for
        them first, while ``run`` still listens for them), then are answered
        that their operation stays queued (``Results.stop``): never a closed
        connection."""
        await self.answered()
        self.results.stop()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=2 * self.settings.renew_s)
        for task in self._calls:
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        await super().close()
        await self._enqueuer.close()
        await self._link.close()

    async def run(self) -> None:
        """Until cancelled (a task of ``daemon.DaemonCluster``): listen for
        this node (the results of its calls; the node's inbox attaches to
        ``listener`` for its queued operations), and read the definitions again every
        ``renew_s`` (for authorization's look-ups of a resource's driver)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.listener.run(), name="cluster listener")
            while True:
                try:
                    await self.refreshed()
                except KernelError as exc:
                    log.debug("cluster book: %s", exc)
                await asyncio.sleep(self.settings.renew_s)

    async def gained(self, resource_id: str) -> bool:
        """This node owns ``resource_id`` now: its actor, from the stored
        definition, attached at once. False when it is not stored any more."""
        resource = await self._link.run(
            lambda db: definition(db, resource_id), "did not give the resource's definition"
        )
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

    # -- the owner's side (``owner_side``) -----------------------------------------

    async def send(self, op: QueuedOperation, epoch: int) -> Outcome:
        """Run ``op`` through its resource's actor (``dispatch.Send``).
        Raises ``Fenced`` when nothing was sent: the fence closed before the
        call reached the driver, the driver was stopped here, or this node
        has no actor for it yet."""
        actor = self.actors.get(op.resource_id)
        node = self.node
        if actor is None or node is None:
            raise Fenced(f"resource {op.resource_id} has no actor on this node yet")
        if not self.serving(actor.driver, actor.pinned):  # given up at the next round
            raise Fenced(f"resource {op.resource_id}: its driver was stopped on this node")
        # This lease, not only the node's fence: a renewal may reopen the fence
        # after the node lost this resource while the call waited in the mailbox.
        guard = LeaseGate(
            node.membership.fence, node.membership.owned, op.resource_id, epoch
        ).may_dispatch
        if op.operation in CHANGES:
            if not guard():
                raise Fenced(f"resource {op.resource_id}: this node may not act on it now")
            return await apply_change(actor, op, self._router)
        return await send_through(actor, op, epoch, guard)

    def serves(self, resource_id: str) -> bool:
        """False once the driver (pinned version) the resource needs was
        stopped here (not while it restarts): the node then gives it up, for
        a node that runs it to claim."""
        actor = self.actors.get(resource_id)
        return actor is None or self.serving(actor.driver, actor.pinned)

    def settling(self, resource_id: str) -> tuple[frozenset[str], Send | None]:
        """How an operation a dead owner sent is settled here (``settling_of``)."""
        return settling_of(self.actors.get(resource_id))

    # -- commands --------------------------------------------------------------------

    async def add(
        self, resource_id: str, driver: str, pinned: str | None, assignments: Sequence[str]
    ) -> Resource:
        """Validate (against the schema installed here), then store: the node
        that claims it attaches it."""
        manifest = self._schema_here(driver, pinned)
        check_resource_id(resource_id)
        properties = checked_properties(manifest, {}, assignments, resource_id)
        resource = Resource(id=resource_id, driver=driver, pinned=pinned, properties=properties)
        await self._repository(lambda r: r.add_resource(resource))
        self._tell("resource.added", resource, pinned=pinned, properties=sorted(properties))
        return resource

    async def remove(self, resource_id: str) -> None:
        """Delete it from the cluster (its operations with it; their callers
        are answered "removed"); the owner's actor closes at its next round."""
        before = await self._definition_of(resource_id)
        await self._repository(lambda r: r.remove_resource(resource_id))
        self._tell("resource.removed", before)

    async def set(self, resource_id: str, assignments: Sequence[str]) -> Resource:
        """Change properties: checked here, then queued as one operation
        (``SET``) that the owner's actor applies between two operations and
        stores with its result; nothing changes when the driver refuses."""
        before = await self._definition_of(resource_id)
        manifest = self._schema_here(before.driver, before.pinned)
        properties = checked_properties(manifest, before.properties, assignments, resource_id)
        try:
            await self._call(resource_id, SET, {"properties": properties}, None)
        except (OperationFailed, RequestError) as exc:
            raise RequestError(
                f"{before.driver} refused the new properties of {resource_id}: {exc}"
            ) from exc
        changed = msgspec.structs.replace(before, properties=properties)
        keys = sorted({a.partition("=")[0].removesuffix(":") for a in assignments})
        self._tell("resource.changed", changed, properties=keys)
        return changed

    async def pin(self, resource_id: str, version: str | None) -> Resource:
        """Pin to ``version`` (None: follow the newest), as one operation
        (``PIN``) the owner's actor applies (a move) and stores with its result."""
        before = await self._definition_of(resource_id)
        if version is not None:
            self._schema_here(before.driver, version)  # raises when not installed here
        try:
            await self._call(resource_id, PIN, {"version": version}, None)
        except (OperationFailed, RequestError) as exc:
            raise RequestError(
                f"could not move {resource_id} to {version or 'the newest version'}: {exc}"
            ) from exc
        self._tell("resource.changed", before, pinned=version)
        return msgspec.structs.replace(before, pinned=version)

    def _schema_here(self, driver: str, version: str | None) -> Manifest:
        """The driver's manifest installed on this node; ``DriverAbsent`` in
        one line saying that this node checks against its own copy."""
        try:
            return self._schema(driver, version)
        except DriverAbsent as exc:
            raise DriverAbsent(
                f"on node {self.settings.node_id}: {exc} (the node that takes a resource "
                "command checks it against its own copy of the driver: run the command on a "
                "node that has it, or install it here)"
            ) from exc

    async def driver_named(self, resource_id: str) -> str:
        return (await self._definition_of(resource_id)).driver

    async def _definition_of(self, resource_id: str) -> Resource:
        """The definition in the database; ``NoSuchName`` when there is none."""
        found = await self._link.run(
            lambda db: definition(db, resource_id), "did not give the resource's definition"
        )
        if found is None:
            raise no_such_resource(resource_id)
        return found

    async def refreshed(self) -> None:
        """Read every resource, its owner and its unfinished operations."""
        listed = await self._link.run(listing, "did not list the resources")
        self._listed = listed
        self._drivers = {entry.resource.id: entry.resource.driver for entry in listed}

    def driver_of(self, resource_id: str) -> str | None:
        """The resource's driver as last read; "" when not known here (yet),
        which a token limited to drivers is answered as a resource that does
        not exist."""
        actor = self.actors.get(resource_id)
        return actor.driver if actor is not None else self._drivers.get(resource_id, "")

    def rows(self) -> list[dict[str, Any]]:
        """Every resource as last read (``refreshed``), ordered by id."""
        return [self._listed_row(entry) for entry in self._listed]

    def page(
        self, limit: int | None, after: str | None
    ) -> tuple[list[dict[str, Any]], str | None, int]:
        return page_of(self._listed, limit, after, self._listed_row)

    def _listed_row(self, entry: Listed) -> dict[str, Any]:
        actor = self.actors.get(entry.resource.id)
        return row_of(entry, actor, self.settings.node_id, self._row)

    def call(
        self, resource_id: str, op: str, args: dict[str, Any], timeout: float | None
    ) -> asyncio.Future[Any]:
        """Queue the call in the cluster; the task's result is the operation's."""
        if op in CHANGES:  # not a driver's operation (no identifier starts with @)
            raise RequestError(f"no operation {op}: 'resource set' and 'pin' change a resource")
        task = asyncio.get_running_loop().create_task(
            self._call(resource_id, op, args, timeout), name=f"cluster call {resource_id}"
        )
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return task

    async def _call(
        self, resource_id: str, op: str, args: dict[str, Any], timeout: float | None
    ) -> Any:
        node = self.node
        self._enqueuer.wakes_itself = node is not None
        limit = self._call_timeout if timeout is None else timeout
        gone = f"resource {resource_id} was removed"
        with self.results.expecting() as registered:  # its result may come before its waiter
            op_id = await self._enqueuer.enqueue(resource_id, op, args)
            if node is not None:
                node.wake(resource_id)
            return await self.results.wait(
                op_id, f"{op} on {resource_id}", limit, self._look, gone, registered=registered
            )

    async def _look(self, op_id: int) -> Finished | None:
        return await self._link.run(lambda db: finished(db, op_id), "did not answer")

    async def _repository(self, act: Callable[[ClusterRepository], Awaitable[T]]) -> T:
        async def with_repository(db: Connection) -> T:
            return await act(ClusterRepository(db, self.settings.node_id, self.settings.lease_s))

        return await self._link.run(with_repository, "did not take the change")


def _lease(settings: ClusterSettings) -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.lease_s)
