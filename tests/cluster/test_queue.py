"""The operation queue in a real PostgreSQL: an enqueue notifies the owner
in the same statement, dispatch follows the queue's order one at a time,
and every guarded write by a stale epoch changes nothing."""

from __future__ import annotations

import pytest
from psycopg import sql

from drivebay.kernel.cluster.connection import channel
from drivebay.kernel.cluster.repository import ClusterRepository, QueuedOperation
from drivebay.protocol.errors import NoSuchName
from tests.cluster.helpers import add, cluster, connected, expire_leases
from tests.helpers import run


async def row(node: ClusterRepository, op_id: int) -> tuple[object, ...]:
    cursor = await node._db.execute(
        "SELECT state, dispatched_epoch, result FROM drivebay.operation WHERE id = %s", (op_id,)
    )
    found = await cursor.fetchone()
    assert found is not None
    return found


def test_an_enqueued_call_notifies_its_owner(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner", "front") as (owner, front):
            await add(owner, 1)
            await owner.claim()
            async with connected(database, "owner") as listening:
                owner_channel = sql.Identifier(channel("owner"))
                await listening.execute(sql.SQL("LISTEN {}").format(owner_channel))
                op_id = await front.enqueue("r000", "resize", {"gb": 2})
                heard = [n.payload async for n in listening.notifies(timeout=10, stop_after=1)]
                assert heard == [f"{op_id} r000"]
            assert await owner.open_operations("r000") == [
                QueuedOperation(op_id, "r000", "resize", {"gb": 2}, "queued", None)
            ]

    run(main())


def test_a_call_for_a_resource_nobody_owns_waits_in_the_queue(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "front") as (front,):
            await add(front, 1)
            first = await front.enqueue("r000", "a", {})
            second = await front.enqueue("r000", "b", {})
            assert [op.id for op in await front.open_operations("r000")] == [first, second]
            assert first < second

    run(main())


def test_a_call_for_no_resource_is_refused_and_nothing_is_queued(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "front") as (front,):
            with pytest.raises(NoSuchName, match="no resource ghost"):
                await front.enqueue("ghost", "a", {})
            cursor = await front._db.execute("SELECT count(*) FROM drivebay.operation")
            assert await cursor.fetchone() == (0,)

    run(main())


def test_dispatch_follows_the_queue_one_at_a_time(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner") as (owner,):
            await add(owner, 1)
            (lease,) = await owner.claim()
            first = await owner.enqueue("r000", "a", {})
            second = await owner.enqueue("r000", "b", {})
            assert not await owner.mark_dispatched(second, "r000", lease.epoch)
            assert await owner.mark_dispatched(first, "r000", lease.epoch)
            assert not await owner.mark_dispatched(first, "r000", lease.epoch)  # once
            assert not await owner.mark_dispatched(second, "r000", lease.epoch)  # first runs
            assert await owner.write_result(first, "r000", lease.epoch, ok=True, result=1)
            assert await owner.mark_dispatched(second, "r000", lease.epoch)
            assert await owner.write_result(second, "r000", lease.epoch, ok=False, result="no")
            assert await row(owner, first) == ("done", lease.epoch, 1)
            assert await row(owner, second) == ("failed", lease.epoch, "no")
            assert await owner.open_operations("r000") == []

    run(main())


def test_guarded_writes_by_a_stale_epoch_change_nothing(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "old", "new") as (old, new):
            await add(old, 1)
            (stale,) = await old.claim()
            dispatched = await old.enqueue("r000", "a", {})
            assert await old.mark_dispatched(dispatched, "r000", stale.epoch)
            queued = await old.enqueue("r000", "b", {})
            await expire_leases(old._db)
            (current,) = await new.claim()
            assert current.epoch > stale.epoch
            # The old owner, back from a pause, tries to finish and go on.
            assert not await old.write_result(dispatched, "r000", stale.epoch, ok=True, result=1)
            assert await row(old, dispatched) == ("dispatched", stale.epoch, None)
            assert not await old.mark_dispatched(queued, "r000", stale.epoch)
            assert await row(old, queued) == ("queued", None, None)
            # Nor may the new owner pass itself off under the old epoch.
            assert not await new.write_result(dispatched, "r000", stale.epoch, ok=True, result=1)
            assert await row(new, dispatched) == ("dispatched", stale.epoch, None)

    run(main())


def test_no_dispatch_once_the_lease_has_ended(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner") as (owner,):
            await add(owner, 1)
            (lease,) = await owner.claim()
            op_id = await owner.enqueue("r000", "a", {})
            await expire_leases(owner._db)
            assert not await owner.mark_dispatched(op_id, "r000", lease.epoch)
            (again,) = await owner.claim()  # rejoining: only under a new epoch
            assert again.epoch > lease.epoch
            assert await owner.mark_dispatched(op_id, "r000", again.epoch)

    run(main())


def test_a_result_still_counts_after_the_lease_ended_if_nobody_claimed(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner") as (owner,):
            await add(owner, 1)
            (lease,) = await owner.claim()
            op_id = await owner.enqueue("r000", "a", {})
            assert await owner.mark_dispatched(op_id, "r000", lease.epoch)
            await expire_leases(owner._db)
            assert await owner.write_result(op_id, "r000", lease.epoch, ok=True, result=None)
            assert await row(owner, op_id) == ("done", lease.epoch, None)

    run(main())


def test_a_claim_skips_a_resource_while_a_guarded_write_holds_it(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "old", "new") as (old, new), connected(database) as writer:
            await add(old, 1)
            await old.claim()
            await expire_leases(old._db)
            # What a guarded write's statement holds until it commits.
            async with writer.transaction():
                await writer.execute(
                    "SELECT FROM drivebay.ownership WHERE resource_id = 'r000' FOR KEY SHARE"
                )
                assert await new.claim() == []  # skipped, not waited for
            assert [lease.resource_id for lease in await new.claim()] == ["r000"]

    run(main())
