"""Draining a node, by its rules: which resources a drain would leave with no
node to run them (pure), and in a real PostgreSQL: a draining node claims
nothing, is not counted in the others' spread, gives up everything it holds
(but not a resource with an operation dispatched), is refused when it would
strand resources (unless forced), and is live again when undone or restarted."""

from __future__ import annotations

import pytest

from drivebay.kernel.cluster.drain import DrainTimedOut, drain_node
from drivebay.kernel.cluster.lease import Runs, stranded
from drivebay.kernel.resources.store import Resource
from drivebay.protocol.errors import NoSuchName, RequestError
from tests.cluster.helpers import add, cluster, settings
from tests.helpers import run


def runs(drivers: tuple[str, ...] = (), versions: tuple[str, ...] = ()) -> Runs:
    return Runs(frozenset(drivers), frozenset(versions))


def test_a_drain_strands_what_no_other_node_can_run() -> None:
    groups = [("disk", None, 3), ("disk", "2.0", 1), ("net", None, 2), ("gpu", None, 0)]
    assert stranded(groups, []) == {"disk": 4, "net": 2}
    assert stranded(groups, [runs(("disk",))]) == {"disk": 1, "net": 2}
    assert stranded(groups, [runs(("disk",), ("disk@2.0",)), runs(("net",))]) == {}
    assert stranded(groups, [runs(("disk", "net"), ("disk@1.0",))]) == {"disk": 1}


def test_a_draining_node_claims_nothing_and_gives_up_all_it_holds(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a", "b", "c") as (a, b, c):
            await add(a, 9)
            held = {
                node.node_id: {x.resource_id: x.epoch for x in await node.claim()}
                for node in (a, b, c)
            }
            assert [len(h) for h in held.values()] == [3, 3, 3]
            busy_id = sorted(held["b"])[0]
            busy = await a.enqueue(busy_id, "op", {})
            assert await b.mark_dispatched(busy, busy_id, held["b"][busy_id])

            info = await a.drain("b")  # any node may ask
            assert (info.node_id, info.state, info.resources) == ("b", "draining", 3)
            assert [(n.node_id, n.state) for n in await c.nodes()] == [
                ("a", "live"),
                ("b", "draining"),
                ("c", "live"),
            ]
            assert await b.surplus() == held["b"]  # everything, over any share
            assert await b.release(held["b"]) == set(held["b"]) - {busy_id}
            # The others spread over two nodes: 5 each at most, b counts no more.
            taken = {x.resource_id: x.epoch for n in (a, c) for x in await n.claim()}
            assert set(taken) == set(held["b"]) - {busy_id}
            assert all(taken[r] > held["b"][r] for r in taken)
            assert await b.claim() == []  # draining: it claims nothing
            assert set(await b.renew() or {}) == {busy_id}  # it still renews what it keeps
            assert await a.drain("b") == await a._node("b")  # draining already: stays so
            assert (await b.surplus()) == {busy_id: held["b"][busy_id]}

    run(main())


def test_an_undone_or_restarted_drain_makes_the_node_live_again(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a", "b") as (a, b):
            await add(a, 4)
            await a.drain("b")
            assert len(await a.claim()) == 4  # b is not counted: a's share is all
            assert await b.claim() == []
            info = await b.undrain("b")
            assert (info.state, info.resources) == ("live", 0)
            assert await b.undrain("b") == await b._node("b")  # live already: stays so
            await a.drain("b")
            await b.register(["disk"])  # its drivebayd restarts: live again
            assert [(n.node_id, n.state) for n in await a.nodes()] == [
                ("a", "live"),
                ("b", "live"),
            ]
            over = await a.surplus()
            assert len(over) == 2 and await a.release(over) == set(over)
            assert len(await b.claim()) == 2

    run(main())


def test_a_drain_is_refused_in_one_line_when_it_cannot_be_done(database: str) -> None:
    async def main() -> None:
        async with (
            cluster(database, "a", "b") as (a, b),
            cluster(database, "nets", drivers=("net",)) as (_nets,),
        ):
            await add(a, 2)
            await a.add_resource(Resource("n000", "net"))
            await a.add_resource(Resource("p000", "disk", pinned="2.0"))
            with pytest.raises(NoSuchName, match=r"^no node x in the cluster; 'drivebayctl nodes'"):
                await a.drain("x")
            with pytest.raises(NoSuchName, match=r"^no node x in the cluster"):
                await a.undrain("x")
            with pytest.raises(RequestError) as refused:
                await a.drain("nets")
            line = str(refused.value)
            assert "\n" not in line and "net (1 resources)" in line and "--force" in line
            assert [n.state for n in await a.nodes()] == ["live", "live", "live"]
            assert (await a.drain("nets", force=True)).state == "draining"
            await b.register(["disk"], ["disk@2.0"])
            with pytest.raises(RequestError, match="no other live node runs disk \\(1 resources"):
                await a.drain("b")  # only b runs the pinned version
            await b.leave()
            with pytest.raises(RequestError, match="node b has left the cluster"):
                await a.drain("b")
            with pytest.raises(RequestError, match="node b has left the cluster"):
                await a.undrain("b")

    run(main())


def test_waiting_for_a_drain_ends_in_one_line_past_its_timeout(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "a", "b") as (a, b):
            await add(a, 4)
            await b.claim()  # b holds 2 and runs no ClusterNode: it never gives them up
            with pytest.raises(DrainTimedOut) as late:
                await drain_node(settings(database, "a"), "b", wait=0.3)
            line = str(late.value)
            assert line.startswith("node b still holds 2 resources after 0.3 s"), line
            assert "\n" not in line and "drivebayctl nodes" in line
            assert (await a._node("b")).state == "draining"  # it goes on draining
            undone = await drain_node(settings(database, "a"), "b", undo=True)
            assert (undone.state, undone.resources) == ("live", 2)
            idle = await drain_node(settings(database, "b"), "a", wait=5)  # a holds nothing
            assert (idle.state, idle.resources) == ("draining", 0)

    run(main())
