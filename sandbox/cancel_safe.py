"""Waiting for something that must finish, whatever cancels the waiter.

Awaiting a task passes the waiter's cancellation on to it, and
``suppress(CancelledError)`` around that await then swallows the waiter's
own cancel: the waiter carries on as if nobody had asked it to stop.
``wait_until_done`` waits with ``asyncio.wait``, which never cancels what it
waits for, and raises the waiter's cancellation once the awaited thing is
done, so a cancelled caller still stops, and only after what it started has
ended (a driver stopped, a pipe connected or a thread returned).
"""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_until_done(awaited: asyncio.Future[Any]) -> None:
    """Wait until ``awaited`` is done, through any number of cancels of the
    caller (none is passed on to it); then raise ``CancelledError`` if the
    caller was cancelled meanwhile. ``awaited``'s own result or error is left
    to the caller to read."""
    cancelled = False
    while not awaited.done():
        try:
            await asyncio.wait([awaited])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
