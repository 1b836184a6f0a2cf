"""A queue settling what a dead owner left, against a real PostgreSQL and a
real driver process (tests/fixtures/ledger): the driver sees the operation's
``op_id`` (the same on the dead owner's run and the heir's) and the epoch it
is sent under; an idempotent operation runs again, one the driver can
reconcile is asked of it, and any other fails ``OutcomeUnknown``."""

from __future__ import annotations

from typing import Any

import pytest

from drivebay.kernel.cluster.dispatch import ResourceQueue, Stop
from drivebay.kernel.cluster.driver_calls import DriverCalls, op_id_of
from drivebay.kernel.cluster.repository import ClusterRepository
from tests.cluster.helpers import add, cluster, expire_leases, open_fence, states
from tests.helpers import fixture_spec, run, started


async def dead_owner_sent(
    dead: ClusterRepository, calls: DriverCalls, reached: bool
) -> tuple[int, int]:
    """The dead owner marks ``write`` dispatched and (``reached``) sends it,
    then dies before its result is written; returns (its id, the next's)."""
    await add(dead, 1)
    (old,) = await dead.claim()
    sent = await dead.enqueue("r000", "write", {"value": "v"})
    after = await dead.enqueue("r000", "plain", {"value": "next"})
    assert await dead.mark_dispatched(sent, "r000", old.epoch)
    if reached:
        (op,) = [o for o in await dead.open_operations("r000") if o.id == sent]
        outcome = await calls.send(op, old.epoch)
        assert outcome.ok and outcome.result["op_id"] == str(sent)
        assert outcome.result.get("epoch", old.epoch) == old.epoch
    await expire_leases(dead._db)
    return sent, after


@pytest.mark.parametrize(
    ("entrypoint", "idempotent", "reached", "expected"),
    [
        ("ledger:Ledger", ("write",), True, ("done", {"times": 2})),  # re-run, same op_id
        ("ledger:Ledger", (), True, ("done", {"settled": "write", "times": 1})),
        ("ledger:Ledger", (), False, ("failed", {"type": "LookupError"})),  # never reached
        ("ledger:Unreconciled", (), True, ("failed", {"type": "OutcomeUnknown"})),
    ],
)
def test_the_heir_settles_through_the_driver(
    database: str,
    tmp_path: Any,
    entrypoint: str,
    idempotent: tuple[str, ...],
    reached: bool,
    expected: tuple[str, dict[str, Any]],
) -> None:
    async def main() -> None:
        spec = fixture_spec(tmp_path, name="ledger", entrypoint=entrypoint)
        async with cluster(database, "dead", "heir") as (dead, heir), started(spec) as proc:
            await proc.attach("r000", {})
            calls = DriverCalls(proc, idempotent)
            sent, after = await dead_owner_sent(dead, calls, reached)
            (lease,) = await heir.claim()
            queue = ResourceQueue(
                heir,
                "r000",
                lease.epoch,
                open_fence(),
                calls.send,
                reconcile=calls.reconcile,
                idempotent=calls.idempotent,
            )
            assert await queue.drain() is Stop.DONE
            (first, second) = await states(heir)
            state, wanted = expected
            assert first[:3] == (sent, state, lease.epoch)
            assert wanted.items() <= first[3].items()
            if state == "done":  # the driver answered under the heir's epoch
                assert first[3]["epoch"] == lease.epoch
            assert second[:3] == (after, "done", lease.epoch)
            assert second[3]["value"] == "next"

    run(main())


def test_op_id_is_the_queue_id() -> None:
    from drivebay.kernel.cluster.repository import QueuedOperation

    assert op_id_of(QueuedOperation(17, "r", "write", {}, "queued", None)) == "17"
