"""Room for descriptors in a driver process, checked before a takeover sends them.

A takeover's descriptors must fit the new process's ``open_files`` limit
beside those it holds. What it holds is read from ``/proc/<pid>/fd`` in a
worker thread; takeovers that arrive together share one reading, and each
reserves its count until it is answered. A reading serves the takeovers of
the next ``RECENT_S`` too, the descriptors of those answered since added to
it (an upgrade's moves, a few in flight at a time, cost one directory
listing, not one each); a check that fails on such a reading is made again
on a fresh one before it refuses. The
check is a courtesy (a clear error before anything is sent): a process that
opens descriptors meanwhile gets ``MSG_CTRUNC`` when it receives them, which
fails the takeover as cleanly (``protocol.fd_passing``). Where the daemon
may not read the process's ``/proc`` entry, only the limit itself is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

RECENT_S = 1.0  # how long a reading of /proc serves later takeovers


class NoRoom(Exception):
    """``count`` descriptors do not fit beside ``held`` (and those reserved) under ``limit``."""

    def __init__(self, count: int, held: int, limit: int) -> None:
        super().__init__(f"{count} descriptors do not fit beside {held} under {limit}")
        self.count, self.held, self.limit = count, held, limit


class DescriptorRoom:
    """The descriptors a process may still be sent, under its ``limit`` (0: none set)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._reserved = 0
        self._reading: asyncio.Future[int] | None = None
        self._read: tuple[int, float] | None = None  # (held, when) of the last reading
        self._since = 0  # descriptors sent (reservations ended) since that reading

    @contextlib.asynccontextmanager
    async def reserved(self, pid: int | None, count: int) -> AsyncIterator[None]:
        """Hold room for ``count`` descriptors while the block runs; raises
        NoRoom when they do not fit."""
        if self.limit and count:
            held = await self._held(pid, fresh=False) if pid else 0
            if held + self._reserved + count >= self.limit and pid:
                held = await self._held(pid, fresh=True)
            if held + self._reserved + count >= self.limit:
                raise NoRoom(count, held + self._reserved, self.limit)
        self._reserved += count
        try:
            yield
        finally:
            self._reserved -= count
            self._since += count  # sent, or closed by the child: counted as held, to be safe

    async def _held(self, pid: int, fresh: bool) -> int:
        read = self._read
        if not fresh and read is not None and time.monotonic() - read[1] < RECENT_S:
            return read[0] + self._since
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.ensure_future(asyncio.to_thread(held_by, pid))
            reading.add_done_callback(self._done)
        return await asyncio.shield(reading)

    def _done(self, reading: asyncio.Future[int]) -> None:
        if self._reading is reading:
            self._reading = None  # the next check reads anew
            if not reading.cancelled() and reading.exception() is None:
                self._read, self._since = (reading.result(), time.monotonic()), 0


def held_by(pid: int) -> int:
    """How many descriptors process ``pid`` has open; 0 when /proc does not say."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0
