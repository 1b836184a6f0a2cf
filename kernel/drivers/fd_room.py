"""Room for descriptors in a driver process, checked before a takeover sends them.

A takeover's descriptors must fit the new process's ``open_files`` limit
beside those it holds. What it holds is read from ``/proc/<pid>/fd`` in a
worker thread; takeovers that arrive together (an upgrade moves every
resource at once) share one reading, and each reserves its count until it is
answered, so a wave of them costs one directory listing, not one each. The
check is a courtesy (a clear error before anything is sent): a process that
opens descriptors meanwhile gets ``MSG_CTRUNC`` when it receives them, which
fails the takeover as cleanly (``protocol.fd_passing``). Where the daemon
may not read the process's ``/proc`` entry, only the limit itself is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator


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

    @contextlib.asynccontextmanager
    async def reserved(self, pid: int | None, count: int) -> AsyncIterator[None]:
        """Hold room for ``count`` descriptors while the block runs; raises
        NoRoom when they do not fit."""
        if self.limit and count:
            held = await self._held(pid) if pid else 0
            if held + self._reserved + count >= self.limit:
                raise NoRoom(count, held + self._reserved, self.limit)
        self._reserved += count
        try:
            yield
        finally:
            self._reserved -= count

    async def _held(self, pid: int) -> int:
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.ensure_future(asyncio.to_thread(held_by, pid))
            reading.add_done_callback(self._read)
        return await asyncio.shield(reading)

    def _read(self, reading: asyncio.Future[int]) -> None:
        if self._reading is reading:
            self._reading = None  # the next check reads anew


def held_by(pid: int) -> int:
    """How many descriptors process ``pid`` has open; 0 when /proc does not say."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0
