"""wait_until_done: the awaited thing is never cancelled by the waiter's
cancels, and the waiter's cancel is raised once it is done."""

from __future__ import annotations

import asyncio

import pytest

from drivebay.sandbox.cancel_safe import wait_until_done
from tests.helpers import run


def test_a_waiter_cancelled_twice_waits_then_stays_cancelled():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        awaited: asyncio.Future[int] = loop.create_future()
        waiter = asyncio.ensure_future(wait_until_done(awaited))
        await asyncio.sleep(0)
        for _ in range(2):
            waiter.cancel()
            await asyncio.sleep(0)
        assert not waiter.done() and not awaited.cancelled()
        awaited.set_result(7)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert awaited.result() == 7

    run(main())


def test_a_waiter_left_alone_returns_once_done():
    async def main() -> None:
        awaited = asyncio.ensure_future(asyncio.sleep(0, "x"))
        await wait_until_done(awaited)
        assert awaited.result() == "x"

    run(main())
