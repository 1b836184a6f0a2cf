"""The cluster side of a running ``drivebayd``: its ``ClusterNode``, started
when the config has ``cluster:`` and stopped at shutdown.

``DaemonCluster.run`` waits until the kernel has read its drivers dir, then
runs a ``ClusterNode`` that registers the drivers (and ``name@version``s)
running here, again whenever one starts or stops, and whose queue workers
send through the actors of the kernel's ``ClusterBook`` (which it keeps:
an actor per resource owned here), beside the book's task that listens
for this node (``listener.Listener``: the results of the calls it accepted,
and the operations queued for its resources, handed to the node's inbox).
``stop`` leaves the cluster; ``stopped`` waits for that, bounded, and
cancels what is left. A node that cannot take part (a refused schema, its
node id taken) says so in one line; the daemon goes on answering, and its
calls wait in the queue for the nodes that run them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import psycopg

from drivebay.kernel.cluster import fault_points
from drivebay.kernel.cluster.book import ClusterBook
from drivebay.kernel.cluster.connection import connect
from drivebay.kernel.cluster.node import ClusterNode
from drivebay.kernel.cluster.repository import ClusterRepository, NodeInfo
from drivebay.kernel.cluster.settings import ClusterSettings, shown_database
from drivebay.kernel.control.schema import NodeRow
from drivebay.kernel.drivers.lifecycle import State
from drivebay.protocol.errors import KernelError

if TYPE_CHECKING:
    from drivebay.kernel.drivers.slot import DriverSlot
    from drivebay.kernel.kernel import Kernel

log = logging.getLogger("drivebay.cluster")
# A driver in these states serves its resources here, or will by itself.
SERVING = frozenset({State.RUNNING, State.STARTING, State.BUILDING, State.BACKOFF})


class DaemonCluster:
    """One daemon's ``ClusterNode``: ``run`` as a task owned by the kernel, then ``stop``."""

    def __init__(self, kernel: Kernel, settings: ClusterSettings) -> None:
        self._kernel = kernel
        self.settings = settings
        self.node: ClusterNode | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, group: asyncio.TaskGroup) -> None:
        """``run`` as a task of ``group`` (the kernel's); ``stopped`` ends it."""
        self._task = group.create_task(self.run(), name="cluster")

    async def run(self) -> None:
        """Until ``stop``: wait for the drivers dir to be read (or ``stop``),
        then run the node."""
        ready = asyncio.ensure_future(self._kernel.ready.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stopping.cancel()
            await asyncio.gather(ready, stopping, return_exceptions=True)
        if self._stopping.is_set():
            return
        drivers, versions = self._running()
        book = self._kernel.book
        assert isinstance(book, ClusterBook), "the kernel opens a ClusterBook with cluster:"
        self.node = ClusterNode(
            self.settings,
            drivers,
            book.send,
            versions=versions,
            keeper=book,
            recorded=book.results.settle,
            fault=fault_points.from_environment(self.settings.node_id),
            leave_after_s=lambda: self._kernel.config.timeouts.drain_s,
            listener=book.listener,
        )
        book.node = self.node
        book.serving = self.serving
        log.info(
            "cluster: node %s joins with drivers %s",
            self.settings.node_id,
            ", ".join(drivers) or "none",
        )
        self._kernel.state_listeners.append(self._on_state)
        # The results of this node's calls, heard of on its channel; the definitions read.
        results = asyncio.get_running_loop().create_task(book.run(), name="cluster book")
        left = refused = False
        try:
            try:
                await self.node.run()
                left = self._stopping.is_set()
            except* KernelError as group:  # SchemaRefused, NodeIdTaken: no retry helps
                for exc in group.exceptions:
                    log.error(
                        "cluster: %s; this node runs no resource queue until restarted "
                        "(its calls still go to the cluster's queue)",
                        exc,
                    )
                refused = True
            if refused:  # the calls it accepts still hear their results, until stop
                book.node = None
                await self._stopping.wait()
                left = True
        finally:
            self._kernel.state_listeners.remove(self._on_state)
            try:
                if left:  # the callers' results (run by other nodes now) still heard, bounded
                    await book.answered()
            finally:  # also when a second stop cancels that wait
                results.cancel()
                await asyncio.wait({results})
                book.node = None

    def _running(self) -> tuple[list[str], list[str]]:
        """The drivers and ``name@version``s running here now (not candidates)."""
        versions = sorted(
            key
            for key, slot in self._kernel.slots.items()
            if slot.state is State.RUNNING and not slot.candidate
        )
        return sorted({key.partition("@")[0] for key in versions}), versions

    def serving(self, driver: str, pinned: str | None) -> bool:
        """Does a version of ``driver`` (``pinned``, if given) run here, or is
        it on its way back by itself (starting, restarting after a crash)? Not
        once it was stopped, failed or gave up: its resources are given up."""
        return any(
            slot.manifest.name == driver
            and (pinned is None or slot.manifest.version == pinned)
            and not slot.candidate
            and slot.state in SERVING
            for slot in self._kernel.slots.values()
        )

    def _on_state(self, slot: DriverSlot, state: State) -> None:
        """A driver started or stopped: the node's registration follows at its next round."""
        if self.node is not None:
            self.node.membership.set_drivers(*self._running())

    def stop(self) -> None:
        """Leave the cluster; ``run`` returns once every task of the node has ended."""
        self._stopping.set()
        if self.node is not None:
            self.node.stop()

    async def node_rows(self) -> list[NodeRow]:
        """The cluster's nodes, for ``drivebayctl nodes``."""
        return [node_row(info) for info in await list_nodes(self.settings)]

    async def stopped(self) -> None:
        """``stop``, then wait for the task ``start`` made to end: leaving
        waits for the calls in flight here (until ``timeouts.drain_s`` after
        now), the round in progress and the leave statement (each at most
        ``renew_s``); then the callers still waiting (``ClusterBook.answered``,
        at most ``drain_s``). Each wait only while something is in flight;
        past ``2 * drain_s + 2 * renew_s + 1`` the task is cancelled (leases
        then expire)."""
        drain_s = self._kernel.config.timeouts.drain_s
        book = self._kernel.book
        if isinstance(book, ClusterBook):  # its waiting callers get as long at its close
            book.leave_after_s = drain_s
        self.stop()
        task = self._task
        if task is None:
            return
        bound = 2 * drain_s + 2 * self.settings.renew_s + 1
        done, _ = await asyncio.wait({task}, timeout=bound)
        if not done:
            log.warning(
                "cluster: node %s did not leave in time; its leases will expire",
                self.settings.node_id,
            )
            task.cancel()
            await asyncio.wait({task}, timeout=self.settings.renew_s)


async def list_nodes(settings: ClusterSettings) -> list[NodeInfo]:
    """The cluster's nodes as its database lists them, over a connection of
    its own (each wait bounded by ``renew_s``); none before a node made the
    schema. Raises ``KernelError`` with one line when the database cannot
    answer."""
    try:
        async with asyncio.timeout(settings.renew_s):
            db = await connect(settings)
        try:
            async with asyncio.timeout(settings.renew_s):
                return await ClusterRepository(db, settings.node_id, settings.lease_s).nodes()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return []  # no node has made the schema yet: none has joined
        finally:
            await db.close()
    except (psycopg.Error, TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or "no answer in time"
        raise KernelError(
            f"the cluster database {shown_database(settings.database)} did not list the "
            f"nodes ({reason}); check that PostgreSQL runs and admits this node"
        ) from exc


def node_row(info: NodeInfo) -> NodeRow:
    """``info`` as ``drivebayctl nodes`` shows it (times as epoch seconds)."""
    until = info.lease_until
    return NodeRow(
        node_id=info.node_id,
        state=info.state,
        last_heartbeat=info.last_heartbeat.timestamp(),
        resources=info.resources,
        lease_until=None if until is None else until.timestamp(),
        draining=info.draining,
    )
