"""What wakes an owner's resource queues: notifications, and a poll.

``Inbox.run`` is one task with a connection of its own: it LISTENs on this
node's channel and calls ``wake(resource_id)`` for each operation notified.
A notification can be lost (its connection dropped, or the call was queued
while the resource had no owner, so nobody was notified); every ``poll_s``,
and after each (re)connection, one query finds which of the resources this
node owns have unfinished operations, and wakes those too. A failing
database is retried every ``renew_s``; cancel the task to end it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

import psycopg

from drivebay.kernel.cluster.connection import bounded, connect
from drivebay.kernel.cluster.repository import ClusterRepository, listen, notified
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.listening = asyncio.Event()  # set while the LISTEN is in place
        self._wake = wake
        self._owned = owned
        self._poll_s = poll_s
        self._clock = clock

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            try:
                await self._connected()
            except (psycopg.Error, KernelError, TimeoutError) as exc:
                self.listening.clear()
                log.debug("cluster inbox: %s; connecting again", exc)
                await asyncio.sleep(self.settings.renew_s)

    async def _connected(self) -> None:
        async with asyncio.timeout(self.settings.renew_s):
            db = await connect(self.settings)
        async with db:
            repository = ClusterRepository(db, self.settings.node_id, self.settings.lease_s)
            await bounded(self.settings.renew_s, listen(db, self.settings.node_id))
            self.listening.set()
            next_poll = self._clock()  # what was queued while nobody listened
            while True:
                if self._clock() >= next_poll:
                    await bounded(self.settings.renew_s, self._poll(repository))
                    next_poll = self._clock() + self._poll_s
                for _, resource_id in await notified(db, max(0.0, next_poll - self._clock())):
                    self._wake(resource_id)

    async def _poll(self, repository: ClusterRepository) -> None:
        owned = self._owned()
        if owned:
            for resource_id in await repository.with_open_operations(owned):
                self._wake(resource_id)
