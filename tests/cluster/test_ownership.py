"""Claiming and renewing leases in a real PostgreSQL: an even spread, only
where the driver runs, a new and greater epoch on every claim, renewals in
one statement, and SKIP LOCKED claimers that never take the same resource."""

from __future__ import annotations

import asyncio

import pytest

from drivebay.kernel.cluster.repository import ClusterRepository
from drivebay.kernel.resources.store import Resource
from drivebay.protocol.errors import NoSuchName, RequestError
from tests.cluster.helpers import add, cluster, connected, eventually, expire_leases
from tests.helpers import run


async def owners(node: ClusterRepository) -> dict[str, tuple[str | None, int]]:
    cursor = await node._db.execute(
        "SELECT resource_id, owner_node, epoch FROM drivebay.ownership ORDER BY resource_id"
    )
    return {r: (o, e) for r, o, e in await cursor.fetchall()}


def test_claims_spread_evenly_across_three_nodes(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "n1", "n2", "n3") as nodes:
            await add(nodes[0], 31)
            claimed = [await node.claim() for node in nodes]
            assert [len(c) for c in claimed] == [11, 11, 9]
            everything = [lease.resource_id for c in claimed for lease in c]
            assert sorted(everything) == [f"r{i:03d}" for i in range(31)]
            epochs = [lease.epoch for c in claimed for lease in c]
            assert len(set(epochs)) == 31 and min(epochs) > 0
            assert [await node.claim() for node in nodes] == [[], [], []]
            table = await owners(nodes[0])
            for node, leases in zip(nodes, claimed, strict=True):
                for lease in leases:
                    assert table[lease.resource_id] == (node.node_id, lease.epoch)

    run(main())


def test_a_node_without_the_driver_never_claims_its_resources(database: str) -> None:
    async def main() -> None:
        async with (
            cluster(database, "disks", drivers=("disk",)) as (disks,),
            cluster(database, "nets", drivers=("net",)) as (nets,),
        ):
            await add(disks, 3, driver="disk", prefix="d")
            await add(disks, 2, driver="net", prefix="n")
            assert [c.resource_id for c in await nets.claim()] == ["n000", "n001"]
            assert [c.resource_id for c in await disks.claim()] == ["d000", "d001", "d002"]
            await expire_leases(disks._db)
            assert [c.resource_id for c in await nets.claim()] == ["n000", "n001"]

    run(main())


def test_a_pinned_resource_goes_only_to_a_node_running_that_version(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "old", "new", register=False) as (old, new):
            await old.register(["disk"], ["disk@1.0.0"])
            await new.register(["disk"], ["disk@2.0.0"])
            await old.add_resource(Resource("pinned", "disk", pinned="2.0.0"))
            assert await old.claim() == []
            assert [c.resource_id for c in await new.claim()] == ["pinned"]

    run(main())


def test_an_expired_lease_is_claimed_by_another_node_with_a_higher_epoch(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a", "b", lease_s=0.5) as (a, b):
            await add(a, 4)
            # b says nothing until a's lease has ended: a is the only live node then.
            await b._db.execute(
                "UPDATE drivebay.node SET heartbeat = now() - interval '1 h' WHERE node_id = 'b'"
            )
            first = {c.resource_id: c.epoch for c in await a.claim()}
            assert len(first) == 4
            await eventually(lambda: _all_expired(a))
            assert await b.renew() == {}  # b beats again: live, owns nothing yet
            second = {c.resource_id: c.epoch for c in await b.claim()}
            assert second.keys() == first.keys()  # a is silent: b's share is everything
            assert all(second[r] > first[r] for r in first)
            assert {o for o, _ in (await owners(a)).values()} == {"b"}
            assert await a.renew() == {}  # a comes back: alive, but owns nothing

    run(main())


async def _all_expired(node: ClusterRepository) -> bool:
    cursor = await node._db.execute("SELECT bool_and(lease_until <= now()) FROM drivebay.ownership")
    row = await cursor.fetchone()
    return bool(row and row[0])


def test_a_renewal_extends_every_lease_of_the_node_in_one_statement(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a", "b") as (a, b):
            await add(a, 6)
            mine = {c.resource_id: c.epoch for c in await a.claim()}
            theirs = {c.resource_id: c.epoch for c in await b.claim()}
            before = await _leases(a)
            assert await a.renew() == mine
            after = await _leases(a)
            renewed = {after[r] for r in mine}
            # now() is the transaction's start: one value for every lease and
            # the heartbeat means one transaction did them all.
            assert len(renewed) == 1 and renewed.pop() > max(before[r] for r in mine)
            assert {r: after[r] for r in theirs} == {r: before[r] for r in theirs}
            cursor = await a._db.execute(
                "SELECT heartbeat + interval '15 s' FROM drivebay.node WHERE node_id = 'a'"
            )
            assert await cursor.fetchone() == (after[next(iter(mine))],)

    run(main())


async def _leases(node: ClusterRepository) -> dict[str, object]:
    cursor = await node._db.execute("SELECT resource_id, lease_until FROM drivebay.ownership")
    return dict(await cursor.fetchall())


def test_a_process_that_lost_its_node_id_renews_nothing(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a") as (first,), cluster(database, "a") as (second,):
            await add(first, 2)
            assert await second.claim() != []
            assert await first.renew() is None  # another process registered "a" since
            assert await first.claim() == []
            assert len(await second.renew() or {}) == 2

    run(main())


def test_a_node_that_starts_a_driver_claims_its_resources_from_then(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a", drivers=()) as (a,), cluster(database, "a") as (b,):
            await add(b, 2, driver="tape")
            assert await b.claim() == []  # registered as running disk only
            assert await b.set_drivers(["tape"], ["tape@1.0"]) is True
            assert {lease.resource_id for lease in await b.claim()} == {"r000", "r001"}
            cursor = await b._db.execute(
                "SELECT drivers, versions FROM drivebay.node WHERE node_id = 'a'"
            )
            assert await cursor.fetchone() == (["tape"], ["tape@1.0"])
            # a, the earlier process of the id, writes nothing
            assert await a.set_drivers(["disk"], []) is False
            cursor = await b._db.execute("SELECT drivers FROM drivebay.node WHERE node_id = 'a'")
            assert await cursor.fetchone() == (["tape"],)

    run(main())


def test_concurrent_claimers_never_take_the_same_resource(database: str) -> None:
    async def main() -> None:
        ids = [f"n{i}" for i in range(4)]
        async with cluster(database, *ids) as nodes:
            await add(nodes[0], 60)
            seen_epochs: set[int] = set()
            for _ in range(5):
                rounds = await asyncio.gather(*(node.claim() for node in nodes))
                taken = [lease.resource_id for leases in rounds for lease in leases]
                assert len(taken) == len(set(taken))  # nobody took one twice
                assert len(taken) == 60  # skipped by one, taken by another: none left
                table = await owners(nodes[0])
                for node, leases in zip(nodes, rounds, strict=True):
                    for lease in leases:
                        assert table[lease.resource_id] == (node.node_id, lease.epoch)
                        assert lease.epoch not in seen_epochs
                        seen_epochs.add(lease.epoch)
                await expire_leases(nodes[0]._db)

    run(main())


def test_the_nodes_are_listed_with_their_resources_and_leases(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a", "b", "c") as (a, b, c):
            await add(a, 4)
            await a.claim()
            await c.leave()
            listed = await b.nodes()
            assert [(n.node_id, n.state, n.resources) for n in listed] == [
                ("a", "live", 2),
                ("b", "live", 0),
                ("c", "left", 0),
            ]
            assert listed[0].lease_until is not None and listed[1].lease_until is None
            await b._db.execute(
                "UPDATE drivebay.node SET heartbeat = now() - interval '1 h' WHERE node_id = 'b'"
            )
            assert [n.state for n in await a.nodes()] == ["live", "silent", "left"]

    run(main())


def test_a_node_that_leaves_gives_its_resources_up(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a", "b") as (a, b), connected(database):
            await add(a, 4)
            await a.claim()
            await a.leave()
            assert await a.renew() is None
            assert len(await b.claim()) == 4

    run(main())


def test_resources_are_added_changed_and_removed(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a") as (a,):
            disk = Resource("vol-1", "disk", properties={"size_gb": 1, "tags": ["x"]})
            await a.add_resource(disk)
            with pytest.raises(RequestError, match="resource vol-1 already exists"):
                await a.add_resource(disk)
            with pytest.raises(RequestError, match="is not a resource id"):
                await a.add_resource(Resource("-bad", "disk"))
            changed = Resource("vol-1", "disk", pinned="2.0.0", properties={"size_gb": 2})
            await a.update_resource(changed)
            assert await a.resources() == [changed]
            await a.enqueue("vol-1", "resize", {})
            await a.remove_resource("vol-1")
            assert await a.resources() == []
            cursor = await a._db.execute("SELECT count(*) FROM drivebay.operation")
            assert await cursor.fetchone() == (0,)
            with pytest.raises(NoSuchName, match="no resource vol-1"):
                await a.update_resource(changed)
            with pytest.raises(NoSuchName, match="no resource vol-1"):
                await a.remove_resource("vol-1")

    run(main())


def test_a_node_over_its_share_releases_the_excess_but_not_a_busy_resource(
    database: str,
) -> None:
    async def main() -> None:
        async with cluster(database, "a") as (a,):
            await add(a, 9)
            first = {lease.resource_id: lease.epoch for lease in await a.claim()}
            assert len(first) == 9
            busy = await a.enqueue("r008", "a", {})
            assert await a.mark_dispatched(busy, "r008", first["r008"])
            async with cluster(database, "b", "c") as (b, c):
                over = await a.surplus()
                assert over == {f"r{i:03d}": first[f"r{i:03d}"] for i in range(3, 9)}
                assert await a.release(over) == set(over) - {"r008"}
                taken = {x.resource_id: x.epoch for n in (b, c) for x in await n.claim()}
                assert set(taken) == {f"r{i:03d}" for i in range(3, 8)}
                assert all(taken[r] > first[r] for r in taken)
                assert await a.release({"r000": first["r000"] - 1}) == set()  # stale epoch
                assert set(await a.renew() or {}) == {"r000", "r001", "r002", "r008"}

    run(main())
