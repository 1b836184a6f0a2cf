"""An owner held at each named point of a dispatch (as a pause of the node
would hold it) while its lease ends and another node takes over: once it
goes on, it sends nothing for the resource it lost and its writes change
nothing; the operation is settled exactly once by the new owner."""

from __future__ import annotations

import asyncio
from typing import Any

from drivebay.kernel.cluster.dispatch import ResourceQueue, Stop
from drivebay.kernel.cluster.lease import Fence
from drivebay.kernel.cluster.repository import QueuedOperation
from tests.cluster.helpers import Clock, Driver, add, cluster, expire_leases, open_fence, states
from tests.helpers import run


class Hold:
    """Holds the dispatch at ``point`` until released."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, point: str, op: QueuedOperation) -> None:
        if point == self.point:
            self.reached.set()
            await asyncio.wait_for(self.release.wait(), 30)


async def paused_owner_then_heir(database: str, point: str) -> dict[str, Any]:
    """The old owner held at ``point`` for operation "a"; its lease ends (its
    clock passes the fence too); the heir drains; the old owner goes on."""
    async with cluster(database, "old", "heir") as (old, heir):
        await add(old, 1)
        (stale,) = await old.claim()
        first = await old.enqueue("r000", "a", {})
        clock = Clock()
        fence: Fence = open_fence(clock)
        old_driver, heir_driver = Driver(), Driver()
        hold = Hold(point)
        paused = ResourceQueue(old, "r000", stale.epoch, fence, old_driver.send, fault=hold)
        draining = asyncio.ensure_future(paused.drain())
        await asyncio.wait_for(hold.reached.wait(), 30)
        clock.now += 60  # the pause outlasts the lease, on the old owner's clock too
        await expire_leases(old._db)
        (lease,) = await heir.claim()
        second = await heir.enqueue("r000", "b", {})
        assert (
            await ResourceQueue(heir, "r000", lease.epoch, open_fence(), heir_driver.send).drain()
            is Stop.DONE
        )
        hold.release.set()
        stop = await asyncio.wait_for(draining, 30)
        return {
            "stop": stop,
            "old": old_driver.ledger,
            "heir": heir_driver.ledger,
            "rows": await states(heir),
            "ids": (first, second),
            "epoch": lease.epoch,
        }


def test_held_before_the_dispatch_commit(database: str) -> None:
    found = run(paused_owner_then_heir(database, "dispatch"))
    first, second = found["ids"]
    assert found["stop"] is Stop.LOST
    assert found["old"] == []
    assert found["heir"] == [("send", first, found["epoch"]), ("send", second, found["epoch"])]


def test_held_between_the_dispatch_commit_and_the_send(database: str) -> None:
    found = run(paused_owner_then_heir(database, "send"))
    first, second = found["ids"]
    assert found["stop"] is Stop.FENCED  # the check right before the send
    assert found["old"] == []
    # Dispatched, never sent: the heir cannot know, so it is not re-run.
    assert found["heir"] == [("send", second, found["epoch"])]
    assert found["rows"][0][:3] == (first, "failed", found["epoch"])
    assert found["rows"][0][3]["type"] == "OutcomeUnknown"


def test_held_before_the_result_write(database: str) -> None:
    found = run(paused_owner_then_heir(database, "result"))
    first, second = found["ids"]
    assert found["stop"] is Stop.LOST  # its result write changed nothing
    assert [entry[1] for entry in found["old"]] == [first]  # sent once, by the old owner
    assert found["heir"] == [("send", second, found["epoch"])]
    assert found["rows"][0][1:3] == ("failed", found["epoch"])
    assert found["rows"][0][3]["type"] == "OutcomeUnknown"
