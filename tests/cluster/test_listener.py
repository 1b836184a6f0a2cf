"""A node hears every kind of notification over one connection: operations
queued for its resources (to its inbox), the results of the calls it
accepted (to their waiters), and resources added (its membership claims at
once); after a reconnection, each waiter looks again."""

from __future__ import annotations

import asyncio
import contextlib
import time

from drivebay.kernel.cluster.connection import Connection, channel, result_channel
from drivebay.kernel.cluster.dispatch import Outcome
from drivebay.kernel.cluster.listener import Listener
from drivebay.kernel.cluster.node import ClusterNode
from drivebay.kernel.cluster.queue_statements import Finished
from drivebay.kernel.cluster.repository import QueuedOperation
from drivebay.kernel.cluster.results import Results
from drivebay.kernel.cluster.settings import ClusterSettings
from tests.cluster.helpers import add, cluster, connected, eventually, settings
from tests.cluster.tcp_proxy import TcpProxy
from tests.helpers import run
from tests.postgres import SUPERUSER, ThrowawayPostgres


async def no_look(op_id: int) -> Finished | None:
    raise AssertionError(f"operation #{op_id} was looked up: its notification was not heard")


def test_one_connection_hears_queued_operations_and_results(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "owner", "front") as (owner, front):
            await add(owner, 1)
            assert len(await owner.claim()) == 1
            # A poll an hour away: only a notification can answer here.
            node = settings(database, "owner")
            results = Results(node, poll_s=3600)
            listener = Listener(node, results)
            woken: list[str] = []
            resumed: list[int] = []
            detach = listener.attach(woken.append, lambda: resumed.append(1))
            task = asyncio.ensure_future(listener.run())
            try:
                await asyncio.wait_for(listener.listening.wait(), 10)
                assert resumed == [1]  # told once it listens: the inbox polls then
                await front.enqueue("r000", "a", {})
                await eventually(lambda: _equal(woken, ["r000"]))
                waiter = asyncio.ensure_future(results.wait(41, "a on r000", 30, no_look, "gone"))
                async with connected(database) as db:
                    await db.execute(
                        "SELECT pg_notify(%s, '41 done {\"ok\": 1}')", (result_channel("owner"),)
                    )
                assert await asyncio.wait_for(waiter, 10) == {"ok": 1}
                # A stray notification on its channels (anyone connected may
                # send one) is ignored: the listener goes on.
                async with connected(database) as db:
                    for stray in ("", "x", "x done 1", "44 done {"):
                        await db.execute(
                            "SELECT pg_notify(%s, %s)", (result_channel("owner"), stray)
                        )
                    await db.execute("SELECT pg_notify(%s, 'x')", (channel("owner"),))
                waiter = asyncio.ensure_future(results.wait(45, "a on r000", 30, no_look, "gone"))
                async with connected(database) as db:
                    await db.execute(
                        "SELECT pg_notify(%s, '45 done 45')", (result_channel("owner"),)
                    )
                assert await asyncio.wait_for(waiter, 10) == 45
                detach()
                await front.enqueue("r000", "b", {})  # heard, but no inbox is attached
                waiter = asyncio.ensure_future(results.wait(42, "b on r000", 30, no_look, "gone"))
                async with connected(database) as db:
                    await db.execute(
                        "SELECT pg_notify(%s, '42 done 2')", (result_channel("owner"),)
                    )
                assert await asyncio.wait_for(waiter, 10) == 2
                assert woken == ["r000"]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    run(main())


def test_after_a_reconnection_each_waiter_looks_at_its_operation(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "front"):
            node = settings(database, "front")
            results = Results(node, poll_s=3600)
            listener = Listener(node, results)
            looked: list[int] = []

            async def look(op_id: int) -> Finished | None:
                looked.append(op_id)
                return Finished("done", "written while nobody listened")

            task = asyncio.ensure_future(listener.run())
            try:
                await asyncio.wait_for(listener.listening.wait(), 10)
                waiter = asyncio.ensure_future(results.wait(7, "a on r000", 30, look, "gone"))
                await asyncio.sleep(0)  # the waiter registers (no time passes)
                async with connected(database) as db:  # the listening connection is cut
                    cursor = await db.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = 'drivebayd front' AND pid <> pg_backend_pid()"
                        " AND query LIKE 'LISTEN%%'"
                    )
                    assert await cursor.fetchall() == [(True,)]
                assert await asyncio.wait_for(waiter, 30) == "written while nobody listened"
                assert looked == [7]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    run(main())


async def _equal(found: list[str], wanted: list[str]) -> bool:
    return found == wanted


def test_a_resource_added_anywhere_is_claimed_at_once_not_at_the_next_round(
    database: str,
) -> None:
    async def main() -> None:
        async with cluster(database, "admin", register=False) as (admin,):
            # Rounds an hour apart: only the added resource's notification
            # can bring the claim within the test's deadline.
            node = hour_apart(database, "claimer")
            task = asyncio.ensure_future(node.run())
            try:
                await eventually(lambda: _joined(node), 30)
                await asyncio.wait_for(node.inbox.listener.listening.wait(), 10)
                await add(admin, 2)
                await eventually(lambda: _owns(node, {"r000", "r001"}), 30)
            finally:
                node.stop()
                await asyncio.wait_for(task, 30)

    run(main())


def test_a_dropped_listening_connection_is_replaced_at_once(database: str) -> None:
    """Its backend terminated while calls wait: the listener LISTENs again
    at once (not after ``renew_s``), so the waiters look again then."""

    async def main() -> None:
        async with cluster(database, "front"):
            node = settings(database, "front", lease_s=300)  # renew_s: 60 s
            results = Results(node, poll_s=3600)
            listener = Listener(node, results)
            resumed: list[int] = []
            listener.attach(lambda _: None, lambda: resumed.append(1))
            looked: list[int] = []

            async def look(op_id: int) -> Finished | None:
                looked.append(op_id)
                return Finished("done", op_id)

            task = asyncio.ensure_future(listener.run())
            try:
                await asyncio.wait_for(listener.listening.wait(), 10)
                waiters = [
                    asyncio.ensure_future(results.wait(n, "a on r000", 120, look, "gone"))
                    for n in (1, 2, 3)
                ]
                await asyncio.sleep(0)  # they register (no time passes)
                async with connected(database) as db:
                    await _terminate_listener(db, "front")
                # Well before renew_s (60 s): the new LISTEN, then each waiter looks.
                assert await asyncio.wait_for(asyncio.gather(*waiters), 20) == [1, 2, 3]
                assert resumed == [1, 1] and sorted(looked) == [1, 2, 3]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    run(main())


async def _joined(node: ClusterNode) -> bool:
    return node.membership.rounds >= 1


async def _owns(node: ClusterNode, wanted: set[str]) -> bool:
    return set(node.membership.owned) == wanted


def test_a_blackholed_listening_link_is_noticed_and_listened_again_once_it_returns(
    postgres: ThrowawayPostgres, database: str
) -> None:
    """Only the listener's link black-holed (the proxy's end still answers
    TCP keepalives, as a middlebox does): a statement on the listening
    connection when nothing was heard for ``renew_s`` finds the link dead;
    once it returns, the listener LISTENs again and hears results."""
    dbname = database.split("?")[0].rsplit("/", 1)[1]
    seen: dict[str, float] = {}

    async def main(proxy: TcpProxy) -> None:
        async with cluster(database, "front"):
            node = settings(proxy.url(dbname, SUPERUSER), "front", lease_s=2.5)  # renew_s 0.5
            results = Results(node, poll_s=3600)
            listener = Listener(node, results)
            resumed: list[int] = []
            listener.attach(lambda _: None, lambda: resumed.append(1))
            task = asyncio.ensure_future(listener.run())
            try:
                await asyncio.wait_for(listener.listening.wait(), 10)
                await asyncio.to_thread(proxy.blackhole)
                cut = time.monotonic()
                await eventually(lambda: _not_set(listener.listening), deadline=30)
                seen["noticed_after_s"] = time.monotonic() - cut
                await asyncio.to_thread(proxy.restore)
                back = time.monotonic()
                await asyncio.wait_for(listener.listening.wait(), 30)
                seen["listening_again_after_s"] = time.monotonic() - back
                assert len(resumed) >= 2
                waiter = asyncio.ensure_future(results.wait(43, "a on r000", 30, no_look, "gone"))
                async with connected(database) as db:
                    await db.execute(
                        "SELECT pg_notify(%s, '43 done 3')", (result_channel("front"),)
                    )
                assert await asyncio.wait_for(waiter, 10) == 3
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    with TcpProxy(f"{postgres.socket_dir}/.s.PGSQL.5432") as proxy:
        run(main(proxy))
    print(f"\nblackholed listening link: {seen}")


async def _terminate_listener(db: Connection, node_id: str) -> None:
    cursor = await db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = %s AND pid <> pg_backend_pid()"
        " AND query LIKE 'LISTEN%%'",
        (f"drivebayd {node_id}",),
    )
    assert await cursor.fetchall() == [(True,)]


async def _not_set(event: asyncio.Event) -> bool:
    return not event.is_set()


def test_hundreds_of_adds_at_once_are_claimed_evenly_in_rounds_at_most_an_early_gap_apart(
    database: str,
) -> None:
    """300 resources added at once from three connections, three nodes whose
    rounds are an hour apart: the claim notifications alone bring each node
    exactly its share (100), no resource twice or unowned, and no node runs
    rounds more often than one per ``early_gap_s``, however many adds it hears."""

    async def main() -> None:
        async with cluster(database, "adder0", "adder1", "adder2", register=False) as adders:
            nodes = [hour_apart(database, f"n{i}") for i in range(3)]
            started = time.monotonic()
            tasks = [asyncio.ensure_future(node.run()) for node in nodes]
            try:
                for node in nodes:
                    await eventually(lambda node=node: _joined(node), 30)
                    await asyncio.wait_for(node.inbox.listener.listening.wait(), 10)
                await asyncio.gather(
                    *(add(adder, 100, prefix=f"a{i}-") for i, adder in enumerate(adders))
                )
                everything = {f"a{i}-{n:03d}" for i in range(3) for n in range(100)}

                async def spread() -> bool:
                    owned = [set(node.membership.owned) for node in nodes]
                    return sum(map(len, owned)) == 300 and set().union(*owned) == everything

                await eventually(spread, 30)
                assert [len(node.membership.owned) for node in nodes] == [100, 100, 100]
                elapsed = time.monotonic() - started
                for node in nodes:  # the join's round, then one per early gap at most
                    assert node.membership.rounds <= 2 + elapsed / node.membership.early_gap_s, (
                        node.membership.rounds,
                        elapsed,
                    )
            finally:
                for node in nodes:
                    node.stop()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)

    run(main())


def test_a_draining_node_hears_adds_and_claims_none_of_them(database: str) -> None:
    """A drained node still hears each add (it runs a round) but claims
    nothing: the live nodes take every added resource, evenly."""

    async def main() -> None:
        async with cluster(database, "adder0", "adder1", register=False) as adders:
            nodes = [hour_apart(database, f"n{i}") for i in range(3)]
            tasks = [asyncio.ensure_future(node.run()) for node in nodes]
            try:
                for node in nodes:
                    await eventually(lambda node=node: _joined(node), 30)
                    await asyncio.wait_for(node.inbox.listener.listening.wait(), 10)
                drained = nodes[2]
                await adders[0].drain("n2")
                rounds = drained.membership.rounds
                await asyncio.gather(
                    *(add(adder, 15, prefix=f"d{i}-") for i, adder in enumerate(adders))
                )

                async def taken() -> bool:
                    return (
                        sum(len(node.membership.owned) for node in nodes[:2]) == 30
                        and drained.membership.rounds > rounds
                    )

                await eventually(taken, 30)
                assert [len(node.membership.owned) for node in nodes] == [15, 15, 0]
            finally:
                for node in nodes:
                    node.stop()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)

    run(main())


def hour_apart(database: str, node_id: str) -> ClusterNode:
    """A node whose membership rounds are an hour apart (so only a claim
    notification brings a round within a test), with drivers that answer None."""

    async def send(op: QueuedOperation, epoch: int) -> Outcome:
        return Outcome(ok=True, result=None)

    settings = ClusterSettings(database, node_id, lease_s=7200, renew_s=3600, grace_s=1)
    return ClusterNode(settings, ["disk"], send)
