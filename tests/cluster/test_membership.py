"""A node's membership over time against a real PostgreSQL, with short
leases: it claims and keeps its resources, hands them over when it leaves
or stops renewing, and fences itself while the database is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from drivebay.kernel.cluster.membership import Membership, NodeIdTaken
from drivebay.kernel.cluster.schema import SchemaRefused
from drivebay.kernel.cluster.settings import ClusterSettings
from tests.cluster.helpers import add, cluster, eventually
from tests.helpers import run
from tests.postgres import ThrowawayPostgres


def member(url: str, node_id: str, changes: list[tuple[dict[str, int], set[str]]]) -> Membership:
    # Short leases, but long enough that a loaded machine's late round does not lose one.
    settings = ClusterSettings(url, node_id, lease_s=2.0, renew_s=0.25, grace_s=0.5)
    return Membership(settings, ["disk"], lambda gained, lost: changes.append((gained, lost)))


async def owning(membership: Membership, count: int) -> bool:
    return len(membership.owned) == count and membership.fence.may_dispatch()


def test_a_leaving_member_hands_its_resources_over(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "admin", register=False) as (admin,):
            await add(admin, 4)
        a_changes: list[tuple[dict[str, int], set[str]]] = []
        b_changes: list[tuple[dict[str, int], set[str]]] = []
        a, b = member(database, "a", a_changes), member(database, "b", b_changes)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(a.run())
            await eventually(lambda: owning(a, 4))
            first = dict(a.owned)
            tasks.create_task(b.run())
            await eventually(lambda: _rounds(b, 2))
            assert b.owned == {}  # it joined later: it takes nothing a holds
            a.stop()
            await eventually(lambda: owning(b, 4))
            assert all(b.owned[r] > first[r] for r in first)
            b.stop()
        assert a_changes[0] == (first, set())
        assert a_changes[-1] == ({}, set(first))  # leaving, it says it lost them all
        assert not a.fence.may_dispatch()

    run(main())


async def _rounds(membership: Membership, count: int) -> bool:
    return membership.rounds >= count


def test_a_member_that_stops_renewing_loses_its_resources_to_another(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "admin", register=False) as (admin,):
            await add(admin, 3)
        a = member(database, "a", [])
        b = member(database, "b", [])
        async with asyncio.TaskGroup() as tasks:
            running_a = tasks.create_task(a.run())
            await eventually(lambda: owning(a, 3))
            first = dict(a.owned)
            tasks.create_task(b.run())
            running_a.cancel()  # killed: no leave, its leases run out
            await eventually(lambda: owning(b, 3))
            assert all(b.owned[r] > first[r] for r in first)
            b.stop()

    run(main())


@pytest.fixture
def own_server() -> Iterator[ThrowawayPostgres]:
    """A server of this test's own, to stop and start again."""
    server = ThrowawayPostgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_fence_closes_while_the_database_is_down_and_opens_after(
    own_server: ThrowawayPostgres,
) -> None:
    async def main() -> None:
        url = own_server.url()
        async with cluster(url, "admin", register=False) as (admin,):
            await add(admin, 3)
        a = member(url, "a", [])
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(a.run())
            await eventually(lambda: owning(a, 3))
            before = dict(a.owned)
            await asyncio.to_thread(own_server.shut_down)
            await eventually(lambda: _fenced(a))
            rounds = a.rounds
            await asyncio.to_thread(own_server.launch)
            await eventually(lambda: _rounds(a, rounds + 1))
            await eventually(lambda: owning(a, 3))
            # Back under epochs the database confirms: the same where its
            # lease never ended, a new and greater one where it was claimed again.
            assert all(a.owned[r] >= before[r] for r in before)
            async with cluster(url, "admin", register=False) as (admin,):
                cursor = await admin._db.execute(
                    "SELECT resource_id, epoch FROM drivebay.ownership"
                    " WHERE owner_node = 'a' AND lease_until > now()"
                )
                assert dict(await cursor.fetchall()) == a.owned
            a.stop()

    run(main())


async def _fenced(membership: Membership) -> bool:
    return not membership.fence.may_dispatch()


def test_a_member_on_a_newer_schema_stops_with_one_line(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "admin", register=False) as (admin,):
            await admin._db.execute("UPDATE drivebay.schema_version SET version = version + 1")
        a = member(database, "a", [])
        with pytest.raises(SchemaRefused, match="upgrade drivebayd on this node"):
            await asyncio.wait_for(a.run(), timeout=30)
        assert not a.fence.may_dispatch()

    run(main())


def test_a_member_whose_node_id_another_process_registered_stops(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "admin", register=False) as (admin,):
            await add(admin, 2)
        a = member(database, "a", [])
        with pytest.raises(NodeIdTaken, match="give each node its own node_id"):
            async with asyncio.timeout(30):
                running = asyncio.ensure_future(a.run())
                try:
                    await eventually(lambda: owning(a, 2))
                    async with cluster(database, "a"):  # a second process with the same id
                        pass
                finally:
                    await running
        assert not a.fence.may_dispatch() and a.owned == {}

    run(main())


def test_adds_heard_while_the_database_is_down_bring_no_early_reconnection() -> None:
    """``claim_soon`` (each add heard) while the database refuses: the member
    tries again after ``renew_s`` as before, not once per add; ``stop`` then
    ends it at once."""

    async def main() -> None:
        attempts = 0

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal attempts
            attempts += 1
            writer.close()

        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            url = f"postgresql://nobody@127.0.0.1:{port}/none?sslmode=disable&connect_timeout=5"
            settings = ClusterSettings(url, "a", lease_s=7200, renew_s=3600, grace_s=1)
            a = Membership(settings, ["disk"], lambda gained, lost: None)
            task = asyncio.ensure_future(a.run())
            try:
                await eventually(lambda: _failing(a), 10)
                assert attempts == 1
                for _ in range(1000):  # adds heard meanwhile, the loop free to act on each
                    a.claim_soon()
                    await asyncio.sleep(0)
                assert attempts == 1 and not task.done()
                a.stop()
                await asyncio.wait_for(task, 10)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    run(main())


async def _failing(membership: Membership) -> bool:
    return membership._failing
