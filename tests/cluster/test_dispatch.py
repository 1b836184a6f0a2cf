"""One resource's queue run by its owner against a real PostgreSQL: in
order and once, nothing sent by a stale or fenced owner, and an operation
left dispatched by a dead owner settled exactly once by the new one."""

from __future__ import annotations

from typing import Any

import pytest

from drivebay.kernel.cluster.dispatch import (
    ResourceQueue,
    Settle,
    Stop,
    settle_rule,
)
from tests.cluster.helpers import Clock, Driver, add, cluster, expire_leases, open_fence, states
from tests.helpers import run


def test_the_settle_rule() -> None:
    assert settle_rule("get", frozenset({"get"}), can_reconcile=True) is Settle.RERUN
    assert settle_rule("put", frozenset({"get"}), can_reconcile=True) is Settle.RECONCILE
    assert settle_rule("put", frozenset({"get"}), can_reconcile=False) is Settle.UNKNOWN


def test_the_owner_runs_its_queue_once_in_order(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner") as (owner,):
            await add(owner, 1)
            (lease,) = await owner.claim()
            ids = [await owner.enqueue("r000", name, {}) for name in ("a", "b", "c")]
            driver = Driver()
            queue = ResourceQueue(owner, "r000", lease.epoch, open_fence(), driver.send)
            assert await queue.drain() is Stop.DONE
            assert await queue.drain() is Stop.DONE
            assert driver.ledger == [("send", i, lease.epoch) for i in ids]
            assert [s[1] for s in await states(owner)] == ["done", "done", "done"]

    run(main())


def test_a_stale_owner_sends_nothing(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "old", "new") as (old, new):
            await add(old, 1)
            (stale,) = await old.claim()
            await old.enqueue("r000", "a", {})
            await expire_leases(old._db)
            await new.claim()
            driver = Driver()
            queue = ResourceQueue(old, "r000", stale.epoch, open_fence(), driver.send)
            assert await queue.drain() is Stop.LOST
            assert driver.ledger == []
            assert [s[1] for s in await states(old)] == ["queued"]

    run(main())


def test_a_fenced_owner_sends_nothing_and_marks_nothing(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner") as (owner,):
            await add(owner, 1)
            (lease,) = await owner.claim()
            await owner.enqueue("r000", "a", {})
            clock = Clock()
            fence = open_fence(clock)
            clock.now = 10.0  # lease_s - grace_s after the last renewal was sent
            driver = Driver()
            queue = ResourceQueue(owner, "r000", lease.epoch, fence, driver.send)
            assert await queue.drain() is Stop.FENCED
            assert driver.ledger == []
            assert [s[1] for s in await states(owner)] == ["queued"]

    run(main())


@pytest.mark.parametrize(
    ("idempotent", "reconciles", "how", "result"),
    [
        (frozenset({"a"}), True, "send", {"did": "a"}),
        (frozenset(), True, "reconcile", {"found": "a"}),
        (frozenset(), False, None, "OutcomeUnknown"),
    ],
)
def test_an_operation_a_dead_owner_dispatched_is_settled_once(
    database: str, idempotent: frozenset[str], reconciles: bool, how: str | None, result: Any
) -> None:
    async def main() -> None:
        async with cluster(database, "dead", "heir") as (dead, heir):
            await add(dead, 1)
            (old,) = await dead.claim()
            sent = await dead.enqueue("r000", "a", {})
            after = await dead.enqueue("r000", "b", {})
            assert await dead.mark_dispatched(sent, "r000", old.epoch)  # then it died
            await expire_leases(dead._db)
            (lease,) = await heir.claim()
            driver = Driver()
            queue = ResourceQueue(
                heir,
                "r000",
                lease.epoch,
                open_fence(),
                driver.send,
                reconcile=driver.reconcile if reconciles else None,
                idempotent=idempotent,
            )
            assert await queue.drain() is Stop.DONE
            settled = [(how, sent, lease.epoch)] if how else []
            assert driver.ledger == [*settled, ("send", after, lease.epoch)]
            (first, second) = await states(heir)
            if result == "OutcomeUnknown":
                assert first[:3] == (sent, "failed", lease.epoch)
                assert first[3]["type"] == "OutcomeUnknown"
            else:
                assert first == (sent, "done", lease.epoch, result)
            assert second == (after, "done", lease.epoch, {"did": "b"})
            # The dead owner, back, can neither finish nor redo it.
            assert not await dead.write_result(sent, "r000", old.epoch, ok=True, result=1)
            assert not await dead.redispatch(sent, "r000", old.epoch)

    run(main())
