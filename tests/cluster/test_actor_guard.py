"""The owner's queue sends through the resource's actor, against a real
PostgreSQL and a real driver process (tests/fixtures/ledger): the actor
asks the fence immediately before the call is written to the driver; a
fence that closed after the queue's own check (a pause right there) sends
nothing, and the operation goes back to queued, so that the heir runs it,
once, rather than settle it ``OutcomeUnknown``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from drivebay.kernel.cluster.dispatch import Outcome, ResourceQueue, Stop
from drivebay.kernel.cluster.owner_side import send_through
from drivebay.kernel.cluster.repository import QueuedOperation
from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.drivers.process import DriverProcess
from drivebay.kernel.resources.actor import ResourceActor
from tests.cluster.helpers import Clock, add, cluster, expire_leases, open_fence, states
from tests.helpers import fixture_spec, run, started


class RunningSlot:
    """What the actor reads of the kernel's slot for a version that runs ``process``."""

    def __init__(self, process: DriverProcess) -> None:
        self.process = process
        self.state = State.RUNNING
        self.closed = False
        self.name = "ledger@1.0.0"


def through(actor: ResourceActor, guard: Callable[[], bool]) -> Any:
    async def send(op: QueuedOperation, epoch: int) -> Outcome:
        return await send_through(actor, op, epoch, guard)

    return send


def test_a_fence_closed_before_the_actor_sends_puts_the_operation_back(
    database: str, tmp_path: Any
) -> None:
    async def main() -> None:
        spec = fixture_spec(tmp_path, name="ledger", entrypoint="ledger:Ledger")
        async with cluster(database, "paused", "heir") as (paused, heir), started(spec) as proc:
            slot = RunningSlot(proc)

            async def router(actor: ResourceActor) -> Any:
                return slot

            actor = ResourceActor("r000", "ledger", {}, router, mailbox_size=4)
            actor.launch()
            try:
                await actor.rebind(slot)  # type: ignore[arg-type]
                await add(paused, 1)
                (old,) = await paused.claim()
                first = await paused.enqueue("r000", "write", {"value": "v"})
                second = await paused.enqueue("r000", "plain", {"value": "next"})
                clock = Clock()
                fence = open_fence(clock)

                def paused_then_checked() -> bool:
                    clock.now = 10.0  # the node paused past its fence right before the send
                    return fence.may_dispatch()

                queue = ResourceQueue(
                    paused, "r000", old.epoch, fence, through(actor, paused_then_checked)
                )
                assert await queue.drain() is Stop.FENCED
                assert [s[:3] for s in await states(paused)] == [
                    (first, "queued", None),  # back in the queue: never sent
                    (second, "queued", None),
                ]

                await expire_leases(paused._db)
                (lease,) = await heir.claim()
                fresh = open_fence()
                queue = ResourceQueue(
                    heir, "r000", lease.epoch, fresh, through(actor, fresh.may_dispatch)
                )
                assert await queue.drain() is Stop.DONE
                (one, two) = await states(heir)
                assert one[:3] == (first, "done", lease.epoch)
                # applied once, by the heir, with the queue id as op_id and its epoch
                assert one[3] == {"op_id": str(first), "times": 1, "epoch": lease.epoch}
                assert two[:3] == (second, "done", lease.epoch)
                assert two[3] == {"value": "next", "epoch": lease.epoch}
            finally:
                await actor.close(detach=True)

    run(main())


def test_a_guarded_call_leaves_the_node_right_after_its_fence_check(
    database: str, tmp_path: Any
) -> None:
    """Frames are written at the end of the event loop's pass, with the
    others of that pass; a guarded call's is written at once: whatever runs
    after the fence said yes (here a callback the guard schedules, the first
    to run after the send) finds nothing of it left in the node, so that a
    pause there cannot hold the call back past the fence."""

    async def main() -> None:
        spec = fixture_spec(tmp_path, name="ledger", entrypoint="ledger:Ledger")
        async with cluster(database, "owner") as (owner,), started(spec) as proc:
            slot = RunningSlot(proc)

            async def router(actor: ResourceActor) -> Any:
                return slot

            actor = ResourceActor("r000", "ledger", {}, router, mailbox_size=4)
            actor.launch()
            held: list[Any] = []

            def checked() -> bool:
                batch = lambda: proc._channel.outbox._batch  # noqa: E731 -- read after the send
                asyncio.get_running_loop().call_soon(lambda: held.append(batch()))
                return True

            try:
                await actor.rebind(slot)  # type: ignore[arg-type]
                await add(owner, 1)
                (lease,) = await owner.claim()
                await owner.enqueue("r000", "write", {"value": "v"})
                queue = ResourceQueue(
                    owner, "r000", lease.epoch, open_fence(), through(actor, checked)
                )
                assert await queue.drain() is Stop.DONE
                assert held and not held[0], held  # nothing held back after the check
            finally:
                await actor.close(detach=True)

    run(main())
