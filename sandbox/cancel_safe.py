"""Waiting for something that must finish, whatever cancels the waiter.

Awaiting a task passes the waiter's cancellation on to it, and
``suppress(CancelledError)`` around that await then swallows the waiter's
own cancel: the waiter carries on as if nobody had asked it to stop.
``wait_out_cancels`` waits with ``asyncio.wait``, which never cancels what it
waits for, and tells the waiter whether it was cancelled meanwhile;
``wait_until_done`` raises that cancellation once the awaited thing is done.
So a cancelled caller still stops, and only after what it started has ended
(a driver stopped and reaped, a pipe connected, a thread returned).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def wait_out_cancels(
    awaited: Collection[asyncio.Future[Any]], timeout: float | None = None
) -> bool:
    """Wait until every one of ``awaited`` is done, or ``timeout`` seconds
    have passed, through any number of cancels of the caller (none is passed
    on); return True if the caller was cancelled meanwhile: it must clean up
    and then raise ``CancelledError`` itself."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    cancelled = False
    while not all(future.done() for future in awaited):
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            break
        try:
            await asyncio.wait(awaited, timeout=left)
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


async def wait_until_done(awaited: asyncio.Future[Any]) -> None:
    """Wait until ``awaited`` is done, through any number of cancels of the
    caller (none is passed on to it); then raise ``CancelledError`` if the
    caller was cancelled meanwhile. ``awaited``'s own result or error is left
    to the caller to read."""
    if await wait_out_cancels([awaited]):
        raise asyncio.CancelledError
