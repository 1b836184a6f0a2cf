"""What wakes an owner's resource queues: notifications, and a poll.

``Inbox.run`` attaches to the node's ``listener.Listener`` (the one
connection that LISTENs for this node; the inbox runs one of its own when
given none) and calls ``wake(resource_id)`` for each operation notified.
A notification can be lost (the listening connection dropped, or the call
was queued while the resource had no owner, so nobody was notified); every
``poll_s``, and each time the listener LISTENs again, one query over the
node's ``Pool`` finds which of the resources this node owns have unfinished
operations, and wakes those too. A failing database is retried at the next
poll; cancel the task to end it. The inbox also passes on the news that a
resource was added (``added``: the node's membership claims at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection

import psycopg

from drivebay.kernel.cluster.connection import Connection, bounded
from drivebay.kernel.cluster.link import Pool
from drivebay.kernel.cluster.listener import Listener
from drivebay.kernel.cluster.repository import ClusterRepository
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.protocol.errors import KernelError

log = logging.getLogger("drivebay.cluster")


class Inbox:
    """Wakes the queues of the resources this node owns (``owned()``)."""

    def __init__(
        self,
        settings: ClusterSettings,
        wake: Callable[[str], None],
        owned: Callable[[], Collection[str]],
        *,
        poll_s: float,
        pool: Pool,
        listener: Listener | None = None,
        added: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._wake = wake
        self._owned = owned
        self._poll_s = poll_s
        self._pool = pool
        self._own_listener = listener is None
        self.listener = Listener(settings) if listener is None else listener
        self._poll_now = asyncio.Event()
        self._added = added  # a resource was added anywhere (the membership claims)

    async def run(self) -> None:
        """Until cancelled."""
        detach = self.listener.attach(self._wake, self._poll_now.set, self._added)
        try:
            async with asyncio.TaskGroup() as tasks:
                if self._own_listener:
                    tasks.create_task(self.listener.run(), name="cluster listener")
                tasks.create_task(self._polling(), name="cluster inbox poll")
        finally:
            detach()

    async def _polling(self) -> None:
        while True:  # at once: what was queued before the inbox attached
            self._poll_now.clear()
            await self._poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), self._poll_s)

    async def _poll(self) -> None:
        owned = self._owned()
        if not owned:
            return
        db: Connection | None = None
        try:
            async with asyncio.timeout(self.settings.renew_s):
                db = await self._pool.connection()
            repository = ClusterRepository(db, self.settings.node_id, self.settings.lease_s)
            found = await bounded(self.settings.renew_s, repository.with_open_operations(owned))
        except (psycopg.Error, KernelError, TimeoutError) as exc:
            if db is not None:
                await self._pool.give_up(db)
            log.debug("cluster inbox: %s; polling again in %g s", exc, self._poll_s)
            return
        for resource_id in found:
            self._wake(resource_id)
