"""A node's database link cut while it dispatches under load, against a
real PostgreSQL, with ``ClusterNode``s in this process:

- black-holed (the test's TCP proxy stops forwarding both ways, closing
  nothing): the node sends nothing to its drivers from ``lease_s - grace_s``
  after the cut (the fence), another node takes its resources over under
  greater epochs, and once the link returns the node renews again and
  sends only under epochs newer than any it held before the cut;
- stopped (a PostgreSQL server of its own, shut down: every statement fails
  at once): the same fence, and after the server is back the node sends
  only under new epochs.

Every accepted operation ends with a final answer, none reaches a driver
twice, and each resource's reach their drivers in order. The timings seen
are printed (pytest -s) and stated in docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from drivebay.kernel.cluster.connection import bounded, connect
from drivebay.kernel.cluster.dispatch import Outcome
from drivebay.kernel.cluster.node import ClusterNode
from drivebay.kernel.cluster.repository import ClusterRepository, QueuedOperation
from drivebay.kernel.cluster.settings import ClusterSettings
from tests.cluster.helpers import add, cluster, eventually
from tests.cluster.tcp_proxy import TcpProxy
from tests.helpers import run
from tests.postgres import SUPERUSER, ThrowawayPostgres

LEASE_S, RENEW_S, GRACE_S = 2.0, 0.5, 0.5
FENCE_S = LEASE_S - GRACE_S
RESOURCES = 4


class Drivers:
    """What reached the drivers of every node: (resource, op id, node, epoch, when)."""

    def __init__(self) -> None:
        self.ledger: list[tuple[str, int, str, int, float]] = []

    def node(self, url: str, node_id: str) -> ClusterNode:
        async def send(op: QueuedOperation, epoch: int) -> Outcome:
            self.ledger.append((op.resource_id, op.id, node_id, epoch, time.monotonic()))
            await asyncio.sleep(0.01)  # the driver at work
            return Outcome(ok=True, result=node_id)

        settings = ClusterSettings(url, node_id, LEASE_S, renew_s=RENEW_S, grace_s=GRACE_S)
        return ClusterNode(settings, ["disk"], send, poll_s=0.25)

    def sent_by(self, node_id: str) -> list[tuple[str, int, str, int, float]]:
        return [entry for entry in self.ledger if entry[2] == node_id]

    def check(self, finals: dict[int, tuple[str, Any]]) -> None:
        """At most once each; in order per resource; every one answered."""
        sent = Counter(op_id for _, op_id, _, _, _ in self.ledger)
        assert not sent or max(sent.values()) == 1, sent.most_common(3)
        for op_id, (state, result) in finals.items():
            assert state == "done" or result["type"] == "OutcomeUnknown", (op_id, result)
            if state == "done":
                assert sent[op_id] == 1
        for resource in {entry[0] for entry in self.ledger}:
            order = [op_id for r, op_id, _, _, _ in self.ledger if r == resource]
            assert order == sorted(order)


async def load(front: ClusterRepository, ids: list[str], accepted: list[int]) -> None:
    """A call every 20 ms, round robin, until cancelled."""
    for resource in itertools.cycle(ids):
        accepted.append(await front.enqueue(resource, "op", {}))
        await asyncio.sleep(0.02)


async def final(front: ClusterRepository, accepted: list[int]) -> dict[int, tuple[str, Any]]:
    async def check() -> dict[int, tuple[str, Any]] | None:
        cursor = await front._db.execute(
            "SELECT id, state, result FROM drivebay.operation WHERE id = ANY (%s)", (accepted,)
        )
        rows = {op_id: (state, result) for op_id, state, result in await cursor.fetchall()}
        done = len(rows) == len(accepted)
        return rows if done and all(s in ("done", "failed") for s, _ in rows.values()) else None

    found: dict[int, tuple[str, Any]] = await eventually(check, deadline=30)
    return found


async def fenced_at(node: ClusterNode) -> float:
    await eventually(lambda: _closed(node), deadline=30)
    return time.monotonic()


async def _closed(node: ClusterNode) -> bool:
    return not node.membership.fence.may_dispatch()


async def owns(node: ClusterNode, count: int) -> bool:
    return len(node.membership.owned) >= count and node.membership.fence.may_dispatch()


def test_a_blackholed_link_fences_the_node_and_it_resumes_under_new_epochs(
    postgres: ThrowawayPostgres, database: str
) -> None:
    dbname = database.split("?")[0].rsplit("/", 1)[1]
    drivers = Drivers()
    seen: dict[str, float] = {}

    async def main(proxy: TcpProxy) -> None:
        async with cluster(database, "front", drivers=()) as (front,):
            await add(front, RESOURCES)
            ids = [r.id for r in await front.resources()]
            cut = drivers.node(proxy.url(dbname, SUPERUSER), "cut")
            heir = drivers.node(database, "heir")
            accepted: list[int] = []
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(cut.run())
                await eventually(lambda: owns(cut, RESOURCES), deadline=30)
                loading = tasks.create_task(load(front, ids, accepted))
                await eventually(lambda: _sent(drivers, "cut", 8), deadline=30)
                before = dict(cut.membership.owned)

                await asyncio.to_thread(proxy.blackhole)
                t_cut = time.monotonic()
                # Its last renewal got through before the cut: the fence ends by FENCE_S.
                assert cut.membership.fence.remaining() <= FENCE_S
                tasks.create_task(heir.run())
                seen["fenced_after_s"] = await fenced_at(cut) - t_cut
                await eventually(lambda: owns(heir, RESOURCES), deadline=30)
                seen["taken_over_after_s"] = time.monotonic() - t_cut
                taken = dict(heir.membership.owned)
                assert all(taken[r] > before[r] for r in before)
                rounds = cut.membership.rounds

                await asyncio.to_thread(proxy.restore)
                t_back = time.monotonic()
                await eventually(lambda: _rounds(cut, rounds + 1), deadline=30)
                seen["renewing_again_after_s"] = time.monotonic() - t_back
                await eventually(lambda: owns(cut, 1), deadline=30)  # its share back
                back = len(drivers.sent_by("cut"))
                await eventually(lambda: _sent(drivers, "cut", back + 4), deadline=30)
                loading.cancel()
                finals = await final(front, accepted)
                cut.stop()
                heir.stop()

        late = [e for e in drivers.sent_by("cut") if t_cut + FENCE_S <= e[4] < t_back]
        assert late == [], late  # nothing sent past the fence while cut off
        resumed = [e for e in drivers.sent_by("cut") if e[4] >= t_back]
        assert resumed and all(epoch > taken[r] for r, _, _, epoch, _ in resumed), resumed
        drivers.check(finals)

    with TcpProxy(f"{postgres.socket_dir}/.s.PGSQL.5432") as proxy:
        run(main(proxy))
    print(f"\nblackholed link: {seen}")


async def _sent(drivers: Drivers, node_id: str, count: int) -> bool:
    return len(drivers.sent_by(node_id)) >= count


async def _rounds(node: ClusterNode, count: int) -> bool:
    return node.membership.rounds >= count


@pytest.fixture
def own_server() -> Iterator[ThrowawayPostgres]:
    """A server of this test's own, to stop and start again."""
    server = ThrowawayPostgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_stopped_database_fences_the_node_and_it_resumes_under_new_epochs(
    own_server: ThrowawayPostgres,
) -> None:
    drivers = Drivers()
    seen: dict[str, float] = {}
    url = own_server.url()

    async def main() -> None:
        async with cluster(url, "front", drivers=()) as (front,):
            await add(front, RESOURCES)
            ids = [r.id for r in await front.resources()]
            # A backlog, so that the node is dispatching when the server stops.
            accepted = [await front.enqueue(ids[i % RESOURCES], "op", {}) for i in range(200)]
        node = drivers.node(url, "alone")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(node.run())
            await eventually(lambda: _sent(drivers, "alone", 8), deadline=30)
            before = dict(node.membership.owned)
            t_cut = time.monotonic()
            assert node.membership.fence.remaining() <= FENCE_S
            await asyncio.to_thread(own_server.shut_down)
            seen["server_stopped_in_s"] = time.monotonic() - t_cut
            seen["fenced_after_s"] = await fenced_at(node) - t_cut
            # The outage lasts past the lease (its length is the scenario, not a
            # wait for something): once back, the leases ended in the database's time.
            await asyncio.sleep(LEASE_S)
            t_back = time.monotonic()
            await asyncio.to_thread(own_server.launch)
            await eventually(lambda: owns(node, RESOURCES), deadline=30)
            seen["owning_again_after_s"] = time.monotonic() - t_back
            async with cluster(url, "front", drivers=(), register=False) as (front,):
                finals = await final(front, accepted)
            node.stop()

        late = [e for e in drivers.sent_by("alone") if t_cut + FENCE_S <= e[4] < t_back]
        assert late == [], late
        resumed = [e for e in drivers.sent_by("alone") if e[4] >= t_back]
        assert resumed and all(epoch > before[r] for r, _, _, epoch, _ in resumed)
        drivers.check(finals)

    run(main())
    print(f"\nstopped database: {seen}")


def test_a_statement_on_a_blackholed_link_ends_in_bounded_time(
    postgres: ThrowawayPostgres, database: str
) -> None:
    """Cancelled once, psycopg would wait for its cancel request on the dead
    link (5 s) and then for the statement (5 s more); ``bounded`` cancels
    again and the connection is closed instead."""
    dbname = database.split("?")[0].rsplit("/", 1)[1]

    async def main(proxy: TcpProxy) -> float:
        settings = ClusterSettings(
            proxy.url(dbname, SUPERUSER), "n1", LEASE_S, renew_s=RENEW_S, grace_s=GRACE_S
        )
        db = await connect(settings)
        async with db:
            await db.execute("SELECT 1")
            await asyncio.to_thread(proxy.blackhole)
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=r"did not answer within 0\.5 s"):
                await bounded(RENEW_S, db.execute("SELECT 1"))
            took = time.monotonic() - started
            assert db.broken or db.closed  # the caller connects again
            await asyncio.to_thread(proxy.restore)
        return took

    with TcpProxy(f"{postgres.socket_dir}/.s.PGSQL.5432") as proxy:
        took = run(main(proxy))
    print(f"\nblackholed statement ended after {took:.2f} s")
    assert took < 5.0  # psycopg's own cancel timeout, which it no longer waits for
