"""The owner's walk of a queue in a real PostgreSQL (``taking``): ``take``
marks the first unfinished operation and returns it, ``finish`` writes a
result and marks the next in the same statement, in order, one at a time;
under a stale epoch or an ended lease neither changes anything."""

from __future__ import annotations

from drivebay.kernel.cluster.connection import Connection
from drivebay.kernel.cluster.taking import finish, take
from tests.cluster.helpers import add, cluster, expire_leases
from tests.helpers import run


async def state(db: Connection, op_id: int) -> tuple[object, ...]:
    cursor = await db.execute(
        "SELECT state, dispatched_epoch, result FROM drivebay.operation WHERE id = %s", (op_id,)
    )
    found = await cursor.fetchone()
    assert found is not None
    return tuple(found)


def test_a_result_and_the_next_mark_go_in_one_statement_in_order(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner") as (owner,):
            await add(owner, 1)
            (lease,) = await owner.claim()
            db, epoch = owner.db, lease.epoch
            assert (await take(db, "owner", "r000", epoch)).op is None  # nothing queued
            first = await owner.enqueue("r000", "a", {"n": 1})
            second = await owner.enqueue("r000", "b", {})
            taken = await take(db, "owner", "r000", epoch)
            assert taken.held and taken.marked and taken.op is not None
            assert (taken.op.id, taken.op.args, taken.op.state) == (first, {"n": 1}, "dispatched")
            again = await take(
                db, "owner", "r000", epoch
            )  # the first is unfinished: not the second
            assert again.op is not None and again.op.id == first and not again.marked
            assert await state(db, second) == ("queued", None, None)
            after = await finish(
                db, "owner", first, "r000", epoch, ok=True, result=1, take=True, notify_me=False
            )
            assert after is not None and after.marked and after.op is not None
            assert after.op.id == second
            assert await state(db, first) == ("done", epoch, 1)
            assert await state(db, second) == ("dispatched", epoch, None)
            last = await finish(
                db,
                "owner",
                second,
                "r000",
                epoch,
                ok=False,
                result="no",
                take=True,
                notify_me=False,
            )
            assert last is not None and last.held and last.op is None
            alone = await finish(  # finished already: nothing changes
                db, "owner", second, "r000", epoch, ok=True, result=2, take=True, notify_me=False
            )
            assert alone is None
            assert await state(db, second) == ("failed", epoch, "no")

    run(main())


def test_a_stale_owner_neither_writes_nor_takes(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "old", "new") as (old, new):
            await add(old, 1)
            (stale,) = await old.claim()
            dispatched = await old.enqueue("r000", "a", {})
            queued = await old.enqueue("r000", "b", {})
            assert (await take(old.db, "old", "r000", stale.epoch)).marked
            await expire_leases(old.db)
            assert not (await take(old.db, "old", "r000", stale.epoch)).held  # lease ended
            (current,) = await new.claim()
            assert current.epoch > stale.epoch
            done = await finish(
                old.db,
                "old",
                dispatched,
                "r000",
                stale.epoch,
                ok=True,
                result=1,
                take=True,
                notify_me=True,
            )
            assert done is None
            assert await state(old.db, dispatched) == ("dispatched", stale.epoch, None)
            assert await state(old.db, queued) == ("queued", None, None)
            taken = await take(old.db, "old", "r000", stale.epoch)
            assert not taken.held and taken.op is None
            assert await state(old.db, queued) == ("queued", None, None)

    run(main())
