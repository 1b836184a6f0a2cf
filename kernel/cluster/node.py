"""A node's cluster side put together; ``daemon.DaemonCluster`` runs it in ``drivebayd``.

``ClusterNode.run`` runs the node's ``Membership`` and ``Inbox`` and, for
each resource the node owns, one worker task that drains the resource's
queue (``dispatch.ResourceQueue``) under the epoch it was claimed with:
at once when the resource is gained (a takeover first settles what the
previous owner left dispatched), then whenever the inbox wakes it. A lost
resource's worker ends after the call in flight, if any (its writes are
guarded, so a result still counts only if no other node claimed the
resource). After each membership round, a node holding more than its fair
share of a driver's resources (it was up before the others), or any at
all while it is draining (``drivebayctl drain-node``), gives up the excess
whose queues are idle, so that the other nodes claim them; a busy one
starts no new drain, so that a later round finds it idle. The workers
share a few connections of their own (``link.Pool``), each opened again
after a failure (the next wake retries). ``stop`` leaves the cluster and
makes ``run`` return once the workers have ended: the workers end first
(their calls in flight finish, at most ``leave_after_s``), then the leases;
a worker whose call is still running then is cancelled (its result could
not count any more: the next owner settles the call).

In ``drivebayd`` a ``Keeper`` (the cluster's resource book) follows the
workers: a worker asks it for the resource's actor before its first drain
(again at each wake until it has one), and tells it when it has ended, its
call in flight finished, so that the actor is closed; a worker of a
resource gained again waits for the end of the previous one first.
``recorded`` hears of each result written here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import psycopg

from drivebay.kernel.cluster.dispatch import FaultPoint, Recorded, ResourceQueue, Send, Stop
from drivebay.kernel.cluster.drain_log import DrainLog
from drivebay.kernel.cluster.inbox import Inbox
from drivebay.kernel.cluster.lease import LeaseGate
from drivebay.kernel.cluster.link import Pool
from drivebay.kernel.cluster.listener import Listener
from drivebay.kernel.cluster.membership import Membership
from drivebay.kernel.cluster.repository import ClusterRepository
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.protocol.errors import KernelError

log = logging.getLogger("drivebay.cluster")


class Keeper(Protocol):
    """What keeps the actors of the resources a node owns."""

    async def gained(self, resource_id: str) -> bool:
        """Make the resource's actor (attached); False when the resource is gone."""

    async def lost(self, resource_id: str) -> None:
        """Close the resource's actor (its worker has ended)."""

    def serves(self, resource_id: str) -> bool:
        """Does the driver the resource needs run on this node now? (A node
        gives up the resources it no longer serves.)"""

    def settling(self, resource_id: str) -> tuple[frozenset[str], Send | None]:
        """How an operation a dead owner sent is settled for this resource:
        its driver's idempotent operations and its ``reconcile`` (None: none)."""


class ClusterNode:
    """Membership, inbox and one queue worker per owned resource; ``run``, then ``stop``."""

    def __init__(
        self,
        settings: ClusterSettings,
        drivers: Iterable[str],
        send: Send,
        *,
        reconcile: Send | None = None,
        idempotent: frozenset[str] = frozenset(),
        poll_s: float | None = None,
        versions: Iterable[str] = (),
        keeper: Keeper | None = None,
        recorded: Recorded | None = None,
        fault: FaultPoint | None = None,
        leave_after_s: Callable[[], float] = lambda: 0.0,
        listener: Listener | None = None,
    ) -> None:
        self.settings = settings
        self._keeper = keeper
        self._recorded = recorded
        self.membership = Membership(
            settings,
            drivers,
            self._changed,
            versions=versions,
            after_round=self._rebalance,
            until_idle=self._workers_ended,
            leave_after_s=leave_after_s,
        )
        self._pool = Pool(settings)  # the workers' connections (and the inbox's poll)
        self.inbox = Inbox(
            settings,
            self._wake,
            lambda: list(self.membership.owned),
            poll_s=settings.renew_s if poll_s is None else poll_s,
            pool=self._pool,
            listener=listener,
            added=self.membership.claim_soon,
        )
        self._send = send
        self._reconcile = reconcile
        self._idempotent = idempotent
        self._fault = fault  # a test's holds (fault_points); None in production
        self._tasks: asyncio.TaskGroup | None = None
        self._workers: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._draining: set[asyncio.Task[Any]] = set()  # workers running their queue now
        self._ending: set[asyncio.Task[Any]] = set()  # workers of resources no longer owned
        self._handing_over: set[str] = set()  # to give up: no new drain (the last round's)
        self._ended: dict[str, asyncio.Task[Any]] = {}  # the last ending worker of each
        self._drain_log = DrainLog(settings.node_id)

    def stop(self) -> None:
        """Leave the cluster; ``run`` returns once every task has ended."""
        self.membership.stop()

    async def run(self) -> None:
        """Until ``stop`` (or cancelled: then leases are left to expire).
        A ``SchemaRefused`` from the membership ends it, inside an
        ExceptionGroup as the task group raises it."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                inbox = tasks.create_task(self.inbox.run(), name="cluster inbox")
                try:
                    await self.membership.run()  # on stop it leaves: every worker ends
                finally:
                    inbox.cancel()
                    # Still running once the node has left (a call in flight past
                    # ``leave_after_s``): its result can no longer count here; the
                    # next owner settles it, as after a kill.
                    for worker in self._ending:
                        worker.cancel()
        finally:
            self._tasks = None
            await self._pool.close()

    def _changed(self, gained: dict[str, int], lost: set[str]) -> None:
        for resource_id in lost:
            worker = self._workers.pop(resource_id, None)
            if worker is not None:
                # Ended, not cancelled: an idle worker returns without another
                # statement; a busy one finishes the call in flight (its result
                # write is guarded) and stops at the next guard.
                self._ending.add(worker[0])
                self._ended[resource_id] = worker[0]
                worker[1].set()
        if self._tasks is None:
            return
        for resource_id, epoch in gained.items():
            woken = asyncio.Event()
            woken.set()  # drain at once: what the previous owner left comes first
            previous = self._ended.get(resource_id)
            task = self._tasks.create_task(
                self._worker(resource_id, epoch, woken, previous),
                name=f"cluster queue {resource_id}",
            )
            self._workers[resource_id] = (task, woken)

    async def _rebalance(self, repository: ClusterRepository) -> None:
        """Give up what this node holds over its fair share (everything, when
        it is draining), and what its keeper no longer serves (the driver
        stopped here), among resources whose queue is idle: their workers end
        first (no call in flight, none started after; their actors
        detached), then the leases end so that other nodes claim them. A
        busy queue starts no new drain once its current one ends, so that a
        later round finds it idle (a resource not served refuses its next
        operation unsent, so its queue soon is idle too)."""
        keeper = self._keeper
        unserved = (
            {}
            if keeper is None
            else {
                resource_id: epoch
                for resource_id, epoch in self.membership.owned.items()
                if not keeper.serves(resource_id)
            }
        )
        draining, given_up = await repository.handover()
        given_up |= unserved
        self._handing_over = set(given_up)
        idle = {
            resource_id: epoch
            for resource_id, epoch in given_up.items()
            if resource_id in self._workers and self._workers[resource_id][0] not in self._draining
        }
        released = await self._hand_over(repository, idle) if idle else set()
        self._drain_log.round(draining, len(released), len(self.membership.owned))

    async def _hand_over(self, repository: ClusterRepository, idle: dict[str, int]) -> set[str]:
        """End the workers of ``idle`` (resource -> epoch), then their leases;
        returns the resources released (the others are owned again)."""
        ending = [self._workers[resource_id][0] for resource_id in idle]
        self.membership.give_up(set(idle))  # their idle workers end, no statement after
        # Detached here (the keeper closes their actors) before another node
        # may attach them; bounded, so that the round ends in time.
        await asyncio.wait(ending, timeout=self.settings.renew_s / 2)
        released = await repository.release(idle)
        kept = {r: e for r, e in idle.items() if r not in released}
        if kept:  # an operation was left dispatched: settle it here first
            self._handing_over -= set(kept)
            self.membership.take_back(kept)
        return released

    async def _workers_ended(self) -> None:
        """Returns once every worker told to end has ended (its call in flight
        finished, its actor closed)."""
        ending = set(self._ended.values())
        if ending:
            await asyncio.wait(ending)

    def wake(self, resource_id: str) -> None:
        """Drain ``resource_id``'s queue now, if this node owns it (a call
        accepted here: no need to wait for the notification)."""
        self._wake(resource_id)

    def _wake(self, resource_id: str) -> None:
        worker = self._workers.get(resource_id)
        if worker is not None:
            worker[1].set()

    async def _worker(
        self,
        resource_id: str,
        epoch: int,
        woken: asyncio.Event,
        previous: asyncio.Task[Any] | None,
    ) -> None:
        me = asyncio.current_task()
        assert me is not None
        try:
            if previous is not None:  # the actor of the previous ownership closes first
                await asyncio.wait({previous})
            await self._drain_when_woken(me, resource_id, epoch, woken)
        finally:
            self._ending.discard(me)
            if self._keeper is not None:
                await self._keeper.lost(resource_id)
            if self._ended.get(resource_id) is me:
                del self._ended[resource_id]

    async def _drain_when_woken(
        self, me: asyncio.Task[Any], resource_id: str, epoch: int, woken: asyncio.Event
    ) -> None:
        kept = self._keeper is None  # the actor is there (or none is needed)
        while True:
            await woken.wait()
            woken.clear()
            if me in self._ending:
                return
            if resource_id in self._handing_over:
                continue  # its calls wait for the next owner (or the next round)
            self._draining.add(me)
            try:
                if not kept:
                    assert self._keeper is not None
                    kept = await self._keeper.gained(resource_id)
                    if not kept:
                        continue  # removed: the next round says it is lost
                repository = ClusterRepository(
                    await self._pool.connection(), self.settings.node_id, self.settings.lease_s
                )
                idempotent, reconcile = self._idempotent, self._reconcile
                if self._keeper is not None:
                    idempotent, reconcile = self._keeper.settling(resource_id)
                queue = ResourceQueue(
                    repository,
                    resource_id,
                    epoch,
                    LeaseGate(self.membership.fence, self.membership.owned, resource_id, epoch),
                    self._send,
                    reconcile=reconcile,
                    idempotent=idempotent,
                    recorded=self._recorded,
                    fault=self._fault,
                    # Lost, or to be given up: no new operation after the one in flight.
                    more=lambda: me not in self._ending and resource_id not in self._handing_over,
                )
                stop = await queue.drain()
            except (psycopg.Error, KernelError, TimeoutError) as exc:
                if me.cancelling():  # it replaced the worker's cancellation: end as asked
                    raise asyncio.CancelledError from exc
                log.debug("cluster queue %s: %s; the next wake tries again", resource_id, exc)
                continue
            except Exception as exc:  # a bug: it ends this drain, not the node (nor other queues)
                log.exception(
                    "cluster queue %s: internal error (a bug); the next wake settles the "
                    "operation in flight as one a dead owner left",
                    resource_id,
                )
                if me.cancelling():  # the error replaced the worker's cancellation
                    raise asyncio.CancelledError from exc
                continue
            finally:
                self._draining.discard(me)
            if stop is Stop.LOST:
                return  # the membership's next round says so too
