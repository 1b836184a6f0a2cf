"""The owner is woken for each queued call: by its notification, or by the
poll when no notification could reach it."""

from __future__ import annotations

import asyncio
import contextlib

from drivebay.kernel.cluster.inbox import Inbox
from drivebay.kernel.cluster.link import Pool
from drivebay.kernel.cluster.listener import Listener
from tests.cluster.helpers import add, cluster, eventually, settings
from tests.helpers import run


def test_a_notification_wakes_the_owner_s_queue(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner", "front") as (owner, front):
            await add(owner, 1)
            assert len(await owner.claim()) == 1
            woken: list[str] = []
            # A poll an hour away: only the notification can wake it here.
            pool = Pool(settings(database, "owner"))
            inbox = Inbox(settings(database, "owner"), woken.append, set, poll_s=3600, pool=pool)
            task = asyncio.ensure_future(inbox.run())
            try:
                await asyncio.wait_for(inbox.listener.listening.wait(), 10)
                await front.enqueue("r000", "a", {})
                await eventually(lambda: _equal(woken, ["r000"]))
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await pool.close()

    run(main())


def test_the_poll_finds_a_call_queued_while_nobody_owned_the_resource(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner", "front") as (owner, front):
            await add(owner, 2)
            await front.enqueue("r000", "a", {})  # nobody owns r000: nobody is notified
            owned: set[str] = set()
            woken: list[str] = []
            pool = Pool(settings(database, "owner"))
            inbox = Inbox(
                settings(database, "owner"), woken.append, lambda: owned, poll_s=0.1, pool=pool
            )
            task = asyncio.ensure_future(inbox.run())
            try:
                await asyncio.wait_for(inbox.listener.listening.wait(), 10)
                await front.enqueue("r001", "b", {})  # front's share: nobody owns it either
                owned.update(lease.resource_id for lease in await owner.claim())
                assert owned == {"r000"}  # its fair share of two among two nodes
                await eventually(lambda: _contains(woken, "r000"))
                assert set(woken) == {"r000"}  # r001 has a call, but is not the owner's
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await pool.close()

    run(main())


def test_an_inbox_that_ends_leaves_nothing_attached_to_the_listener_that_goes_on(
    database: str,
) -> None:
    """As in ``drivebayd``: the book's listener outlives the node's inbox (a
    node that stops, or whose schema is refused); the ended inbox is told
    nothing more, and another attaches and is woken."""

    async def main() -> None:
        async with cluster(database, "owner", "front") as (owner, front):
            await add(owner, 1)
            assert len(await owner.claim()) == 1
            node = settings(database, "owner")
            listener = Listener(node)
            pool = Pool(node)
            listening = asyncio.ensure_future(listener.run())
            try:
                first: list[str] = []
                inbox = Inbox(node, first.append, set, poll_s=3600, pool=pool, listener=listener)
                task = asyncio.ensure_future(inbox.run())
                await asyncio.wait_for(listener.listening.wait(), 10)
                await front.enqueue("r000", "a", {})
                await eventually(lambda: _equal(first, ["r000"]))
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                assert listener._queued is None and listener._resumed is None
                await front.enqueue("r000", "b", {})  # heard by the listener, told to nobody
                second: list[str] = []
                inbox = Inbox(node, second.append, set, poll_s=3600, pool=pool, listener=listener)
                task = asyncio.ensure_future(inbox.run())
                await eventually(lambda: _attached(listener))
                await front.enqueue("r000", "c", {})
                await eventually(lambda: _equal(second, ["r000"]))
                assert first == ["r000"] and not listening.done()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finally:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening
                await pool.close()

    run(main())


async def _attached(listener: Listener) -> bool:
    return listener._queued is not None


async def _equal(found: list[str], wanted: list[str]) -> bool:
    return found == wanted


async def _contains(found: list[str], wanted: str) -> bool:
    return wanted in found
