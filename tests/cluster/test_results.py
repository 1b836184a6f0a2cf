"""A call's result reaches its waiter whichever comes first: the result or
the waiter; a result no call here can still claim is not kept. A look at
the database fails a test, since each result below is delivered by a
notification or by this node's worker (the last test runs an owner node
against the test's PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from drivebay.kernel.cluster.dispatch import Outcome, storable
from drivebay.kernel.cluster.node import ClusterNode
from drivebay.kernel.cluster.queue_statements import Finished
from drivebay.kernel.cluster.repository import ClusterRepository, QueuedOperation
from drivebay.kernel.cluster.results import Results
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.protocol.errors import OperationFailed
from tests.cluster.helpers import add, cluster, eventually, settings
from tests.helpers import run

# A poll an hour away: a waiter that needed it would time out the test.
SETTINGS = ClusterSettings(
    database="postgresql://db/x", node_id="front", lease_s=7200, renew_s=3600, grace_s=1
)


async def no_look(op_id: int) -> Finished | None:
    raise AssertionError(f"operation #{op_id} was looked up: its result was lost")


def wait(
    results: Results, op_id: int, registered: Callable[[], None] | None = None
) -> asyncio.Future[object]:
    return asyncio.ensure_future(
        results.wait(op_id, "record on r1", 30, no_look, "removed", registered=registered)
    )


def test_a_notified_result_that_came_before_its_waiter_answers_it_at_once() -> None:
    async def main() -> None:
        results = Results(SETTINGS)
        with results.expecting() as seven, results.expecting() as eight:  # both enqueuing
            # The owner ran them and notified before this node's enqueue answered.
            results.heard('7 done {"n": 1}')
            results.heard('8 failed {"type": "ValueError", "message": "bad"}')
            assert await asyncio.wait_for(wait(results, 7, seven), 10) == {"n": 1}
            with pytest.raises(OperationFailed, match="bad"):
                await asyncio.wait_for(wait(results, 8, eight), 10)
        assert not results._early

    run(main())


def test_a_result_settled_here_before_its_waiter_answers_it_at_once() -> None:
    async def main() -> None:
        results = Results(SETTINGS)
        with results.expecting() as registered:
            results.settle(9, Outcome(True, "ok"))
            assert await asyncio.wait_for(wait(results, 9, registered), 10) == "ok"

    run(main())


def test_a_result_after_its_waiter_answers_it() -> None:
    async def main() -> None:
        results = Results(SETTINGS)
        waiter = wait(results, 11)
        await asyncio.sleep(0)  # the waiter registers (no time passes)
        results.heard("11 done 5")
        assert await asyncio.wait_for(waiter, 10) == 5

    run(main())


def test_a_result_no_call_here_can_claim_is_not_kept() -> None:
    """The owner's worker settles every result it writes, also of calls
    other nodes accepted; a waiter that timed out hears its result later:
    nobody here will claim those, and a node under such a load must not
    keep them."""

    async def main() -> None:
        results = Results(SETTINGS)
        results.settle(1, Outcome(True, 1))  # accepted by another node
        results.heard("2 done 2")  # its waiter gave up
        assert not results._early
        with results.expecting() as registered:  # a call between its enqueue and its waiter
            results.heard("3 done 3")  # its own, or not: kept until it has its waiter
            with results.expecting():  # a call that begins after: it cannot be #3's
                assert list(results._early) == [3]
                registered()  # the first has its waiter (not #3)
                assert not results._early
                results.heard("4 done 4")
                assert list(results._early) == [4]
        assert not results._early  # the second is gone too (cancelled): nobody left

    run(main())


def test_an_owner_keeps_no_result_of_the_calls_other_nodes_accepted(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "front", drivers=()) as (front,):
            await add(front, 2)
            node_settings = settings(database, "owner", lease_s=5)
            results = Results(node_settings)

            async def send(op: QueuedOperation, epoch: int) -> Outcome:
                return Outcome(True, op.id)

            owner = ClusterNode(node_settings, ["disk"], send, recorded=results.settle)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(owner.run())
                accepted = [await front.enqueue(f"r00{n % 2}", "op", {}) for n in range(20)]
                await eventually(lambda: _all_done(front, accepted), deadline=30)
                owner.stop()
            assert not results._early, len(results._early)

    run(main())


async def _all_done(front: ClusterRepository, accepted: list[int]) -> bool:
    states = {op_id: state for op_id, _, state, _, _ in await _rows(front, accepted)}
    return len(states) == len(accepted) and set(states.values()) == {"done"}


async def _rows(front: ClusterRepository, ids: list[int]) -> list[tuple[Any, ...]]:
    cursor = await front._db.execute(
        "SELECT id, resource_id, state, accepted_by, result FROM drivebay.operation"
        " WHERE id = ANY (%s)",
        (ids,),
    )
    return await cursor.fetchall()


def test_a_result_json_cannot_hold_is_stored_as_the_error_that_says_so() -> None:
    op = QueuedOperation(3, "r1", "read", {}, "dispatched", 1)
    kept, stored = storable(op, Outcome(True, {"raw": b"\x00\x01", 7: 1e20}))
    # Answered here as any other node answers: as stored (base64, a text key).
    assert kept == Outcome(True, {"raw": "AAE=", "7": 1e20})
    assert msgspec.json.decode(stored) == {"raw": "AAE=", "7": 1e20}
    refused, stored = storable(op, Outcome(True, msgspec.msgpack.Ext(1, b"x")))
    assert not refused.ok and refused.result["type"] == "ResultNotStorable"
    assert "the result of read cannot be stored" in refused.result["message"]
    assert msgspec.json.decode(stored) == refused.result
    refused, stored = storable(op, Outcome(True, {"v": [1.0, float("nan")]}))
    assert refused.result["type"] == "ResultNotStorable", refused  # not null
    assert "NaN" in refused.result["message"]
