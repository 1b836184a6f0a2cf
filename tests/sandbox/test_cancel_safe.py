"""wait_out_cancels and wait_until_done: the awaited things are never
cancelled by the waiter's cancels, and the waiter learns of its cancel (or gets
it raised) once they are done."""

from __future__ import annotations

import asyncio

import pytest

from drivebay.sandbox.cancel_safe import wait_out_cancels, wait_until_done
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


def test_waiting_out_cancels_says_so_and_ends_at_its_timeout():
    """What reaping a child relies on: two cancels during the wait neither
    cut it short nor reach the awaited things, the caller learns it was
    cancelled, and a thing that never ends is given up at the timeout."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        never: asyncio.Future[None] = loop.create_future()
        waiter = asyncio.ensure_future(wait_out_cancels([first], timeout=60))
        await asyncio.sleep(0)
        for _ in range(2):
            waiter.cancel()
            await asyncio.sleep(0)
        assert not waiter.done() and not first.cancelled()
        first.set_result(None)
        assert await waiter is True
        assert await wait_out_cancels([never], timeout=0.01) is False
        assert not never.done()

    run(main())
