"""A call's result reaches its waiter whichever comes first: the result or
the waiter. No database here: a look at the database fails the test, since
each result below is delivered by a notification or by this node's worker."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from drivebay.kernel.cluster import results as results_module
from drivebay.kernel.cluster.dispatch import Outcome, storable
from drivebay.kernel.cluster.queue_statements import Finished
from drivebay.kernel.cluster.repository import QueuedOperation
from drivebay.kernel.cluster.results import Results
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.protocol.errors import OperationFailed
from tests.helpers import run

# A poll an hour away: a waiter that needed it would time out the test.
SETTINGS = ClusterSettings(
    database="postgresql://db/x", node_id="front", lease_s=7200, renew_s=3600, grace_s=1
)


async def no_look(op_id: int) -> Finished | None:
    raise AssertionError(f"operation #{op_id} was looked up: its result was lost")


def wait(results: Results, op_id: int) -> asyncio.Future[object]:
    return asyncio.ensure_future(results.wait(op_id, "record on r1", 30, no_look, "removed"))


def test_a_notified_result_that_came_before_its_waiter_answers_it_at_once() -> None:
    async def main() -> None:
        results = Results(SETTINGS)
        # The owner ran it and notified before this node's enqueue answered.
        results.heard('7 done {"n": 1}')
        results.heard('8 failed {"type": "ValueError", "message": "bad"}')
        assert await asyncio.wait_for(wait(results, 7), 10) == {"n": 1}
        with pytest.raises(OperationFailed, match="bad"):
            await asyncio.wait_for(wait(results, 8), 10)

    run(main())


def test_a_result_settled_here_before_its_waiter_answers_it_at_once() -> None:
    async def main() -> None:
        results = Results(SETTINGS)
        results.settle(9, Outcome(True, "ok"))
        assert await asyncio.wait_for(wait(results, 9), 10) == "ok"

    run(main())


def test_a_result_after_its_waiter_answers_it() -> None:
    async def main() -> None:
        results = Results(SETTINGS)
        waiter = wait(results, 11)
        await asyncio.sleep(0)  # the waiter registers (no time passes)
        results.heard("11 done 5")
        assert await asyncio.wait_for(waiter, 10) == 5

    run(main())


def test_a_result_nobody_claims_is_dropped_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        results = Results(SETTINGS)
        monkeypatch.setattr(results_module, "EARLY_KEEP_S", 0.0)
        results.heard("1 done 1")  # its waiter gave up long ago
        results.heard("2 done 2")  # the next one finds the first too old
        assert list(results._early) == [2]

    run(main())


def test_a_result_json_cannot_hold_is_stored_as_the_error_that_says_so() -> None:
    op = QueuedOperation(3, "r1", "read", {}, "dispatched", 1)
    kept, stored = storable(op, Outcome(True, {"raw": b"\x00\x01"}))
    assert kept == Outcome(True, {"raw": b"\x00\x01"})  # answered here as the driver said
    assert msgspec.json.decode(stored) == {"raw": "AAE="}  # stored (and sent on) as base64
    refused, stored = storable(op, Outcome(True, msgspec.msgpack.Ext(1, b"x")))
    assert not refused.ok and refused.result["type"] == "ResultNotStorable"
    assert "the result of read cannot be stored" in refused.result["message"]
    assert msgspec.json.decode(stored) == refused.result
