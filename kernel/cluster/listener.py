"""The one connection on which a node hears the cluster's notifications.

Three kinds of news reach a node through PostgreSQL's LISTEN/NOTIFY: an
operation was queued for a resource it owns (channel ``channel(node)``,
payload ``<operation id> <resource id>``: the inbox wakes that resource's
queue), a call it accepted has its result (``result_channel(node)``:
``results.Results.heard``), and a resource was added (``CLAIM_CHANNEL``,
to every node: the membership claims at once); anything else notified
there is ignored. All come over one connection, in one ``notifies()``
loop left only to check a link that was quiet (below): PostgreSQL (15) wakes every
listening backend of the database at each notification, whatever its
channels, so each listening connection costs the server a transaction per
wake-up, and a loop re-entered per notification costs the node more.

``run`` connects, LISTENs on its channels and hands out what it hears,
until cancelled. A connection that drops is replaced at once (once per
``renew_s``: its waiters look again then, not a poll later); a failing or
unreachable database is retried every ``renew_s``. A link that stops
answering without closing is not always seen by TCP keepalives (a proxy or
middlebox between node and server answers them itself), so the loop is
left when nothing was heard for ``renew_s`` and the LISTENs, again and
bounded by ``renew_s``, check the connection (notifications that come meanwhile are
kept by psycopg for the next pass): a dead listening link is replaced
within three to four ``renew_s``. After each LISTEN (the first, and each
after a reconnection) the results' waiters look at their operations again
and the attached inbox polls (``resumed``): what was notified while nobody
listened is found.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import psycopg
from psycopg import sql

from drivebay.kernel.cluster.connection import (
    CLAIM_CHANNEL,
    Connection,
    bounded,
    channel,
    connect,
    result_channel,
)
from drivebay.kernel.cluster.results import Results
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.protocol.errors import KernelError

log = logging.getLogger("drivebay.cluster")

Queued = Callable[[str], None]  # wake the queue of this resource
Resumed = Callable[[], None]  # listening again: look for what was missed
Added = Callable[[], None]  # a resource was added: claim now


class Listener:
    """This node's notifications: queued operations to the attached inbox,
    results to ``results`` (None: nobody here waits for results)."""

    def __init__(self, settings: ClusterSettings, results: Results | None = None) -> None:
        self.settings = settings
        self.listening = asyncio.Event()  # set while the LISTEN is in place
        self._results = results
        self._queued: Queued | None = None
        self._resumed: Resumed | None = None
        self._added: Added | None = None
        self._queue_channel = channel(settings.node_id)

    def attach(
        self, queued: Queued, resumed: Resumed, added: Added | None = None
    ) -> Callable[[], None]:
        """Hand queued operations to ``queued`` (one inbox at a time), call
        ``resumed`` after each LISTEN and ``added`` when a resource was
        added; returns what detaches them."""
        self._queued, self._resumed, self._added = queued, resumed, added

        def detach() -> None:
            if self._queued is queued:
                self._queued = self._resumed = self._added = None

        return detach

    async def run(self) -> None:
        """Until cancelled."""
        loop = asyncio.get_running_loop()
        again_at = -math.inf  # a dropped connection is replaced at once from then
        while True:
            try:
                await self._listen()
            except (psycopg.Error, KernelError, TimeoutError) as exc:
                dropped = self.listening.is_set()  # it listened: replaced at once
                self.listening.clear()
                log.debug("cluster listener: %s; connecting again", exc)
                if not dropped or loop.time() < again_at:
                    await asyncio.sleep(self.settings.renew_s)
                again_at = loop.time() + self.settings.renew_s

    async def _listen(self) -> None:
        renew_s = self.settings.renew_s
        async with asyncio.timeout(renew_s):
            db: Connection = await connect(self.settings)
        async with db:
            await bounded(renew_s, self._listen_on(db))
            self.listening.set()
            if self._results is not None:
                self._results.relook()
            if self._resumed is not None:
                self._resumed()
            while True:
                heard = False
                async for note in db.notifies(timeout=renew_s):
                    heard = True
                    self._hand_out(note.channel, note.payload)
                if not heard:  # is the link still there? (a LISTEN again changes nothing)
                    await bounded(renew_s, self._listen_on(db))

    async def _listen_on(self, db: Connection) -> None:
        names = (
            channel(self.settings.node_id),
            result_channel(self.settings.node_id),
            CLAIM_CHANNEL,
        )
        for name in names:
            await db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))

    def _hand_out(self, on: str, payload: str) -> None:
        if on == self._queue_channel:
            resource_id = payload.partition(" ")[2]  # "": not ours (anyone may notify)
            if self._queued is not None and resource_id:  # else: the inbox polls when it attaches
                self._queued(resource_id)
        elif on == CLAIM_CHANNEL:
            if self._added is not None:  # else: no membership here to claim
                self._added()
        elif self._results is not None:
            self._results.heard(payload)
