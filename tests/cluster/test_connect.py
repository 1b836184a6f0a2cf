"""A connection cancelled while it opens is closed before the cancellation
returns, not left to the garbage collector (a stopping node's half-open
sockets were seen by the suite's leak guard)."""

from __future__ import annotations

import asyncio
import os

import pytest

from drivebay.kernel.cluster.connection import connect
from tests.cluster.helpers import settings
from tests.helpers import run


def sockets() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.add(int(name))
        except FileNotFoundError:  # the listing's own descriptor, closed
            pass
    return found


def test_a_connect_cancelled_midway_leaves_no_socket(database: str) -> None:
    async def main() -> None:
        before = sockets()
        for _ in range(5):  # each time at another point of the handshake
            task = asyncio.ensure_future(connect(settings(database, "n1")))
            while sockets() == before and not task.done():
                await asyncio.sleep(0)  # until its socket exists (no time passes)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert sockets() == before
        db = await connect(settings(database, "n1"))  # and connecting still works
        await db.close()

    run(main())
