"""Draining one of three ``ClusterNode``s in one process, under load: calls
are enqueued before, during and after the drain; the drained node ends
holding nothing, the others own every resource under greater epochs, and
every accepted operation reaches a driver exactly once, in order per
resource, and is done (each resource was handed over with its queue idle,
so nothing is left to settle). Undoing the drain gives it its share back."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

import pytest

from drivebay.kernel.cluster.dispatch import Outcome, Send
from drivebay.kernel.cluster.drain import DrainTimedOut, drain_node
from drivebay.kernel.cluster.node import ClusterNode
from drivebay.kernel.cluster.repository import QueuedOperation
from drivebay.kernel.cluster.settings import ClusterSettings
from tests.cluster.helpers import add, cluster, eventually, settings
from tests.cluster.test_node import _all_final, _owned_by
from tests.helpers import run

RESOURCES = 9


def test_a_drained_node_hands_everything_over_under_load_and_loses_nothing(
    database: str,
) -> None:
    ledger: list[tuple[str, int, str]] = []  # (resource, operation id, node): what drivers saw

    def node(node_id: str) -> ClusterNode:
        async def send(op: QueuedOperation, epoch: int) -> Outcome:
            ledger.append((op.resource_id, op.id, node_id))
            await asyncio.sleep(0.003)  # the driver at work: a drain may land here
            return Outcome(ok=True, result=node_id)

        settings = ClusterSettings(database, node_id, lease_s=2.0, renew_s=0.25, grace_s=0.5)
        return ClusterNode(settings, ["disk"], send, poll_s=0.2)

    async def main() -> None:
        async with cluster(database, "front", drivers=()) as (front,):
            await add(front, RESOURCES)
            ids = [r.id for r in await front.resources()]
            nodes = [node(f"n{i}") for i in range(3)]
            drained, *others = nodes
            async with asyncio.TaskGroup() as tasks:
                for n in nodes:
                    tasks.create_task(n.run())
                await eventually(lambda: _spread(nodes, 3))
                before = dict(drained.membership.owned)
                calls = itertools.cycle(ids)
                accepted = [await front.enqueue(next(calls), "op", {}) for _ in range(27)]
                await front.drain("n0")
                # Calls keep coming while the drain goes on: to resources the
                # drained node still holds, has just released, or has lost.
                while drained.membership.owned:
                    accepted.append(await front.enqueue(next(calls), "op", {}))
                    await asyncio.sleep(0.01)
                    assert len(accepted) < 2000, "the drain did not end"
                accepted += [await front.enqueue(next(calls), "op", {}) for _ in range(27)]
                await eventually(lambda: _owned_by(others, ids), deadline=30)
                after = {r: e for n in others for r, e in n.membership.owned.items()}
                assert all(after[r] > e for r, e in before.items())
                finals = await eventually(lambda: _all_final(front, accepted), deadline=30)
                listed = {n.node_id: n for n in await front.nodes()}
                assert (listed["n0"].state, listed["n0"].resources) == ("draining", 0)
                assert await _rounds_pass(drained, 3) and drained.membership.owned == {}

                await front.undrain("n0")  # back to work: it gets its share again
                await eventually(lambda: _spread(nodes, 3), deadline=30)
                for n in nodes:
                    n.stop()

        sent = Counter(op_id for _, op_id, _ in ledger)
        assert sorted(sent) == sorted(accepted)  # none lost
        assert set(sent.values()) == {1}  # none run twice
        assert {state for state, _ in finals.values()} == {"done"}
        for resource in ids:
            order = [op_id for r, op_id, _ in ledger if r == resource]
            assert order == sorted(order)  # none reordered
        assert any(n == "n0" for _, _, n in ledger)  # the drained node did work first

    run(main())


def test_a_drained_node_hands_over_a_queue_that_never_empties(database: str) -> None:
    """Calls keep two resources' queues full on the drained node: each queue
    ends the drain it is running, starts no other, and is handed over; the
    heir runs what was left, in order, once each."""
    ledger: list[tuple[str, int, str]] = []

    def node(node_id: str) -> ClusterNode:
        async def send(op: QueuedOperation, epoch: int) -> Outcome:
            ledger.append((op.resource_id, op.id, node_id))
            await asyncio.sleep(0.01)
            return Outcome(ok=True, result=node_id)

        settings = ClusterSettings(database, node_id, lease_s=2.0, renew_s=0.25, grace_s=0.5)
        return ClusterNode(settings, ["disk"], send, poll_s=0.2)

    async def main() -> None:
        async with cluster(database, "front", drivers=()) as (front,):
            await add(front, 2)
            ids = [r.id for r in await front.resources()]
            drained, heir = node("n0"), node("n1")
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(drained.run())
                await eventually(lambda: _owned_by([drained], ids))
                tasks.create_task(heir.run())
                accepted = [await front.enqueue(r, "op", {}) for r in ids for _ in range(5)]
                await eventually(lambda: _at_least(ledger, 2))
                await eventually(lambda: _at_round(heir, 1))  # registered: it can take them
                await front.drain("n0")
                while drained.membership.owned:  # never fewer than 3 queued per resource
                    for resource in ids:
                        while len(await front.open_operations(resource)) < 3:
                            accepted.append(await front.enqueue(resource, "op", {}))
                    await asyncio.sleep(0.005)
                    assert len(accepted) < 3000, "the drain did not end"
                assert len(await front.open_operations(ids[0])) >= 2  # still busy when handed
                finals = await eventually(lambda: _all_final(front, accepted), deadline=30)
                for n in (drained, heir):
                    n.stop()

        sent = Counter(op_id for _, op_id, _ in ledger)
        assert sorted(sent) == sorted(accepted) and set(sent.values()) == {1}
        assert {state for state, _ in finals.values()} == {"done"}
        for resource in ids:
            order = [op_id for r, op_id, _ in ledger if r == resource]
            assert order == sorted(order)
            assert {n for r, _, n in ledger if r == resource} == {"n0", "n1"}

    run(main())


def test_a_draining_node_that_died_is_listed_silent_and_still_draining(database: str) -> None:
    """Its heartbeat set back as if it died while draining: ``nodes`` lists
    it ``silent`` with ``draining`` kept; ``drain-node --wait`` counts its
    leases until they end, then answers; ``--undo`` clears ``draining``."""

    async def main() -> None:
        async with cluster(database, "a", "b") as (a, b):
            await add(a, 4)
            await a.claim()
            await b.claim()
            await a.drain("b")
            await a.db.execute(
                "UPDATE drivebay.node SET heartbeat = now() - interval '1 h' WHERE node_id = 'b'"
            )
            listed = {n.node_id: n for n in await a.nodes()}
            assert (listed["b"].state, listed["b"].draining, listed["b"].resources) == (
                "silent",
                True,
                2,
            )
            assert (listed["a"].state, listed["a"].draining) == ("live", False)
            asking = settings(database, "a")
            with pytest.raises(DrainTimedOut, match="still holds 2 resources"):
                await drain_node(asking, "b", wait=0)  # asked again: it stays draining
            await a.db.execute(  # its leases end, as they do lease_s after it died
                "UPDATE drivebay.ownership SET lease_until = now() - interval '1 ms'"
                " WHERE owner_node = 'b'"
            )
            drained = await drain_node(asking, "b", wait=10)
            assert (drained.state, drained.draining, drained.resources) == ("silent", True, 0)
            undone = await drain_node(asking, "b", undo=True)
            assert (undone.state, undone.draining) == ("silent", False)

    run(main())


def test_a_silent_draining_node_shows_both_in_the_plain_listing(capsys: Any) -> None:
    from drivebay.kernel.control import ctl_render

    row = {"node_id": "b", "state": "silent", "last_heartbeat": 0.0, "resources": 2}
    ctl_render.print_nodes([{**row, "draining": True}, {**row, "node_id": "c"}])
    ctl_render.print_drain({**row, "draining": True})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["b", "silent", "(draining)"]
    assert lines[1].split()[:3] == ["c", "silent", "beat"]
    assert lines[2] == "b is silent (draining): 2 resources"


class Keeper:
    """Stands for the resource book: when each actor was attached and when
    its detach ended (a slow detach, as a driver may take)."""

    def __init__(self, node_id: str, events: list[tuple[str, str, str, float]]) -> None:
        self.node_id = node_id
        self.events = events  # (what, node, resource, monotonic time)

    async def gained(self, resource_id: str) -> bool:
        self.events.append(("attached", self.node_id, resource_id, time.monotonic()))
        return True

    async def lost(self, resource_id: str) -> None:
        await asyncio.sleep(0.1)
        self.events.append(("detached", self.node_id, resource_id, time.monotonic()))

    def serves(self, resource_id: str) -> bool:
        return True

    def settling(self, resource_id: str) -> tuple[frozenset[str], Send | None]:
        return frozenset(), None


def test_a_drained_node_detaches_each_resource_before_another_attaches_it(
    database: str,
) -> None:
    events: list[tuple[str, str, str, float]] = []

    def node(node_id: str, renew_s: float) -> ClusterNode:
        async def send(op: QueuedOperation, epoch: int) -> Outcome:
            return Outcome(ok=True, result=node_id)

        settings = ClusterSettings(database, node_id, lease_s=2.0, renew_s=renew_s, grace_s=0.5)
        return ClusterNode(settings, ["disk"], send, poll_s=0.2, keeper=Keeper(node_id, events))

    async def main() -> None:
        async with cluster(database, "front", drivers=()) as (front,):
            await add(front, 4)
            ids = [r.id for r in await front.resources()]
            drained, heir = node("n0", 0.25), node("n1", 0.05)  # the heir claims at once
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(drained.run())
                await eventually(lambda: _owned_by([drained], ids))
                tasks.create_task(heir.run())
                await eventually(lambda: _at_round(heir, 1))
                accepted = [await front.enqueue(r, "op", {}) for r in ids]  # each attached
                await eventually(lambda: _all_final(front, accepted))
                await front.drain("n0")
                await eventually(lambda: _owned_by([heir], ids), deadline=30)
                await eventually(lambda: _attached(events, "n1", len(ids)))
                for n in (drained, heir):
                    n.stop()

        for resource in ids:
            seen = [
                (what, who)
                for what, who, r, _ in sorted(events, key=lambda e: e[3])
                if r == resource
            ]
            assert seen[:3] == [("attached", "n0"), ("detached", "n0"), ("attached", "n1")], seen

    run(main())


async def _attached(events: list[tuple[str, str, str, float]], node_id: str, count: int) -> bool:
    return sum(1 for what, who, _, _ in events if (what, who) == ("attached", node_id)) >= count


async def _at_least(ledger: list[tuple[str, int, str]], count: int) -> bool:
    return len(ledger) >= count


async def _spread(nodes: list[ClusterNode], each: int) -> bool:
    return all(len(n.membership.owned) == each for n in nodes)


async def _rounds_pass(node: ClusterNode, count: int) -> bool:
    """True once ``count`` more rounds of ``node`` have gone by (it claimed nothing)."""
    start = node.membership.rounds
    await eventually(lambda: _at_round(node, start + count))
    return True


async def _at_round(node: ClusterNode, rounds: int) -> bool:
    return node.membership.rounds >= rounds
