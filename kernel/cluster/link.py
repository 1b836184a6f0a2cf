"""One connection to the cluster's database, kept for the resource book.

``Link.run`` runs one action over the connection (opened at first use, and
again after a failure), bounded by ``renew_s``; a database that fails or
does not answer in time is one line (``KernelError``) saying what was not
done, and the connection is given up so that the next action opens a new
one. psycopg runs one statement at a time on a connection: actions from
several tasks take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

from drivebay.kernel.cluster.connection import Connection, connect
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.protocol.errors import KernelError

T = TypeVar("T")


class Link:
    """A connection of its own, opened when needed; ``close`` at the end."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self._db: Connection | None = None
        self._lock = asyncio.Lock()

    async def run(self, act: Callable[[Connection], Awaitable[T]], failed: str) -> T:
        """``act`` over the connection; ``failed`` says what was not done
        (``the cluster database {failed} (reason); ...``)."""
        try:
            async with asyncio.timeout(self.settings.renew_s):
                return await act(await self._connection())
        except (psycopg.Error, TimeoutError) as exc:
            await self._give_up()
            reason = " ".join(str(exc).split()) or "no answer in time"
            raise KernelError(
                f"the cluster database {failed} ({reason}); retry once it answers"
            ) from exc

    async def close(self) -> None:
        await self._give_up()

    async def _connection(self) -> Connection:
        async with self._lock:
            if self._db is not None and (self._db.closed or self._db.broken):
                await self._give_up()
            if self._db is None:
                self._db = await connect(self.settings)
            return self._db

    async def _give_up(self) -> None:
        """Forget the connection (a statement cut short may have left it
        half-way) and close it."""
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(psycopg.Error):
                await db.close()
