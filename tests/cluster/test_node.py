"""Three nodes in one process against a real PostgreSQL, under load: the
one owning most resources is cut off (its tasks cancelled: no goodbye, its
leases run out); every resource gets a new owner under a greater epoch, and
every accepted operation reaches a driver at most once, in order per
resource, and gets a final answer (those its dead owner had sent without
recording a result: OutcomeUnknown, never sent again)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

from drivebay.kernel.cluster.dispatch import Outcome
from drivebay.kernel.cluster.node import ClusterNode
from drivebay.kernel.cluster.repository import ClusterRepository, QueuedOperation
from drivebay.kernel.cluster.settings import ClusterSettings
from tests.cluster.helpers import add, cluster, eventually
from tests.helpers import run

RESOURCES = 9
CALLS_PER_RESOURCE = 8


def test_a_node_cut_off_under_load_loses_nothing_and_repeats_nothing(database: str) -> None:
    ledger: list[tuple[str, int, str]] = []  # (resource, operation id, node): what drivers saw

    def node(node_id: str) -> ClusterNode:
        async def send(op: QueuedOperation, epoch: int) -> Outcome:
            ledger.append((op.resource_id, op.id, node_id))
            await asyncio.sleep(0.005)  # the driver at work: a kill may land here
            return Outcome(ok=True, result=node_id)

        settings = short_leases(database, node_id)
        return ClusterNode(settings, ["disk"], send, poll_s=0.2)

    async def main() -> None:
        async with cluster(database, "front", drivers=()) as (front,):
            await add(front, RESOURCES)
            nodes = [node(f"n{i}") for i in range(3)]
            async with asyncio.TaskGroup() as tasks:
                running = [tasks.create_task(n.run()) for n in nodes]
                await eventually(lambda: _all_owned(nodes))
                ids = [r.id for r in await front.resources()]
                calls = itertools.cycle(ids)
                accepted = [await front.enqueue(next(calls), "op", {}) for _ in range(36)]
                await eventually(lambda: _at_least(ledger, 12))
                victim = max(range(3), key=lambda i: len(nodes[i].membership.owned))
                before = dict(nodes[victim].membership.owned)
                running[victim].cancel()  # cut off: no leave, its leases run out
                for _ in range(RESOURCES * CALLS_PER_RESOURCE - 36):
                    accepted.append(await front.enqueue(next(calls), "op", {}))
                survivors = [n for i, n in enumerate(nodes) if i != victim]
                await eventually(lambda: _owned_by(survivors, ids), deadline=30)
                after = {r: e for n in survivors for r, e in n.membership.owned.items()}
                assert all(after[r] > e for r, e in before.items())
                finals = await eventually(lambda: _all_final(front, accepted), deadline=30)
                for n in survivors:
                    n.stop()

        sent = Counter(op_id for _, op_id, _ in ledger)
        assert max(sent.values()) == 1  # no operation reached a driver twice
        for op_id, (state, result) in finals.items():
            if state == "done":
                assert sent[op_id] == 1
            else:  # sent by the victim, result never written: settled, not re-run
                assert result["type"] == "OutcomeUnknown"
                assert sent[op_id] <= 1
        unknown = [op_id for op_id, (state, _) in finals.items() if state == "failed"]
        assert len(unknown) <= len(before)  # at most one in flight per resource it owned
        for resource in {r for r, _, _ in ledger}:
            order = [op_id for r, op_id, _ in ledger if r == resource]
            assert order == sorted(order)

    run(main())


def test_nodes_that_join_later_get_their_share_and_nothing_is_lost(database: str) -> None:
    ledger: list[tuple[str, int, str]] = []

    def node(node_id: str) -> ClusterNode:
        async def send(op: QueuedOperation, epoch: int) -> Outcome:
            ledger.append((op.resource_id, op.id, node_id))
            await asyncio.sleep(0.002)
            return Outcome(ok=True, result=node_id)

        settings = short_leases(database, node_id)
        return ClusterNode(settings, ["disk"], send, poll_s=0.2)

    async def main() -> None:
        async with cluster(database, "front", drivers=()) as (front,):
            await add(front, RESOURCES)
            first, *later = nodes = [node(f"n{i}") for i in range(3)]
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(first.run())
                await eventually(lambda: _owned_by([first], [f"r{i:03d}" for i in range(9)]))
                before = dict(first.membership.owned)
                ids = sorted(before)
                accepted = [await front.enqueue(ids[i % RESOURCES], "op", {}) for i in range(27)]
                for n in later:
                    tasks.create_task(n.run())
                accepted += [await front.enqueue(ids[i % RESOURCES], "op", {}) for i in range(27)]
                await eventually(lambda: _spread(nodes, 3), deadline=30)
                finals = await eventually(lambda: _all_final(front, accepted), deadline=30)
                moved = {r: e for n in later for r, e in n.membership.owned.items()}
                assert all(e > before[r] for r, e in moved.items())
                for n in nodes:
                    n.stop()

        sent = Counter(op_id for _, op_id, _ in ledger)
        assert sorted(sent) == sorted(accepted) and set(sent.values()) == {1}  # handed over idle
        assert {state for state, _ in finals.values()} == {"done"}
        for resource in ids:
            order = [op_id for r, op_id, _ in ledger if r == resource]
            assert order == sorted(order)

    run(main())


async def _spread(nodes: list[ClusterNode], each: int) -> bool:
    return all(len(n.membership.owned) == each for n in nodes)


async def _all_owned(nodes: list[ClusterNode]) -> bool:
    return sum(len(n.membership.owned) for n in nodes) == RESOURCES


async def _at_least(ledger: list[tuple[str, int, str]], count: int) -> bool:
    return len(ledger) >= count


async def _owned_by(nodes: list[ClusterNode], ids: list[str]) -> bool:
    return sorted(r for n in nodes for r in n.membership.owned) == sorted(ids)


async def _all_final(
    front: ClusterRepository, accepted: list[int]
) -> dict[int, tuple[str, Any]] | None:
    cursor = await front._db.execute(
        "SELECT id, state, result FROM drivebay.operation WHERE id = ANY (%s)", (accepted,)
    )
    rows = {op_id: (state, result) for op_id, state, result in await cursor.fetchall()}
    if len(rows) == len(accepted) and all(s in ("done", "failed") for s, _ in rows.values()):
        return rows
    return None


def test_an_unexpected_error_in_a_queue_ends_that_drain_not_the_node(database: str) -> None:
    sent: list[int] = []
    raised: list[int] = []  # r000's first operation: its send raises

    async def send(op: QueuedOperation, epoch: int) -> Outcome:
        sent.append(op.id)
        if op.resource_id == "r000" and not raised:
            raised.append(op.id)
            raise RuntimeError("a bug in the send path")
        return Outcome(ok=True, result="ran")

    async def main() -> None:
        async with cluster(database, "front", drivers=()) as (front,):
            await add(front, 2)
            node = ClusterNode(short_leases(database, "n0"), ["disk"], send, poll_s=0.2)
            task = asyncio.ensure_future(node.run())
            try:
                await eventually(lambda: _owned_by([node], ["r000", "r001"]))
                first = await front.enqueue("r000", "op", {})  # its send raises
                other = await front.enqueue("r001", "op", {})  # another queue runs on
                after = await front.enqueue("r000", "op", {})  # the same queue runs on
                finals = await eventually(lambda: _all_final(front, [first, other, after]))
                assert not task.done()  # the node still runs
                assert raised == [first]  # r000's operations are sent in order
                assert finals[first][0] == "failed"  # sent once, then settled: not run twice
                assert finals[first][1]["type"] == "OutcomeUnknown", finals[first]
                assert finals[other] == ("done", "ran") and finals[after] == ("done", "ran")
                assert Counter(sent)[first] == 1
            finally:
                node.stop()
                await asyncio.wait_for(task, 30)

    run(main())


def test_a_cancelled_call_whose_cleanup_raises_still_ends_its_worker(database: str) -> None:
    """A node's run cancelled (past the daemon's stop bound, a second
    SIGTERM) while a call runs: a send path that turns that cancellation
    into an error (a bug) must not keep the worker alive, else run never
    returns and the worker outlives the node."""
    sent = asyncio.Event()

    async def send(op: QueuedOperation, epoch: int) -> Outcome:
        sent.set()
        try:
            await asyncio.Event().wait()  # runs until the node is cancelled
        except asyncio.CancelledError:
            raise RuntimeError("a bug: the cleanup of a cancelled call fails") from None
        return Outcome(ok=True, result="never")

    async def main() -> None:
        async with cluster(database, "front", drivers=()) as (front,):
            await add(front, 1)
            node = ClusterNode(short_leases(database, "n0"), ["disk"], send, poll_s=3600)
            task = asyncio.ensure_future(node.run())
            try:
                await eventually(lambda: _owned_by([node], ["r000"]))
                await front.enqueue("r000", "op", {})
                await asyncio.wait_for(sent.wait(), 10)
                task.cancel()
                # Without the fix the worker swallows its cancellation and waits
                # for a wake that never comes: run does not return.
                done, _ = await asyncio.wait({task}, timeout=20)
                assert done, "the node's run did not return: a worker outlived its cancel"
                assert task.cancelled()
            finally:
                if not task.done():
                    for worker in asyncio.all_tasks():
                        if worker.get_name().startswith("cluster queue"):
                            worker.cancel()  # the leak guard then finds no task left
                    await asyncio.gather(task, return_exceptions=True)

    run(main())


def short_leases(database: str, node_id: str) -> ClusterSettings:
    return ClusterSettings(database, node_id, lease_s=1.5, renew_s=0.25, grace_s=0.5)
