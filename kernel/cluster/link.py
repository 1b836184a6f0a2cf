"""A few connections to the cluster's database, taken in turn.

``Pool.connection`` hands out one of ``size`` connections, round robin,
each opened at first use and again once it is closed or broken; psycopg
runs one statement at a time per connection, so the statements of many
tasks (calls being queued, queue workers) spread over a few connections
instead of waiting in one line. ``Link.run`` runs one action over the next
connection, bounded by ``renew_s``; a database that fails or does not
answer in time is one line (``KernelError``) saying what was not done, and
that connection is given up so that its next use opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import psycopg

from drivebay.kernel.cluster.connection import Connection, connect
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.protocol.errors import KernelError

T = TypeVar("T")
POOL_SIZE: Final = 4  # per user of a pool (the book's link, the queue workers)


class Pool:
    """``size`` connections of its own, opened when needed; ``close`` at the end."""

    def __init__(self, settings: ClusterSettings, size: int = POOL_SIZE) -> None:
        self.settings = settings
        self._dbs: list[Connection | None] = [None] * size
        self._locks = [asyncio.Lock() for _ in range(size)]
        self._turn = itertools.cycle(range(size))

    async def connection(self) -> Connection:
        """The next connection in turn (opened within ``renew_s``)."""
        index = next(self._turn)
        async with self._locks[index]:
            db = self._dbs[index]
            if db is not None and (db.closed or db.broken):
                await _closed(db)
                db = None
            if db is None:
                async with asyncio.timeout(self.settings.renew_s):
                    db = self._dbs[index] = await connect(self.settings)
            return db

    async def give_up(self, db: Connection) -> None:
        """Forget ``db`` (a statement cut short may have left it half-way) and close it."""
        for index, held in enumerate(self._dbs):
            if held is db:
                self._dbs[index] = None
        await _closed(db)

    async def close(self) -> None:
        dbs, self._dbs = self._dbs, [None] * len(self._dbs)
        for db in dbs:
            if db is not None:
                await _closed(db)


class Link:
    """The resource book's statements over a ``Pool``."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.pool = Pool(settings)

    async def run(self, act: Callable[[Connection], Awaitable[T]], failed: str) -> T:
        """``act`` over a connection; ``failed`` says what was not done
        (``the cluster database {failed} (reason); ...``)."""
        db: Connection | None = None
        try:
            async with asyncio.timeout(self.settings.renew_s):
                db = await self.pool.connection()
                return await act(db)
        except (psycopg.Error, TimeoutError) as exc:
            if db is not None:
                await self.pool.give_up(db)
            reason = " ".join(str(exc).split()) or "no answer in time"
            raise KernelError(
                f"the cluster database {failed} ({reason}); retry once it answers"
            ) from exc

    async def close(self) -> None:
        await self.pool.close()


async def _closed(db: Connection) -> None:
    with contextlib.suppress(psycopg.Error):
        await db.close()
