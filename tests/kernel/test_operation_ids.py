"""Exactly-once operations, the driver's side, against real driver processes:
an operation's ``op_id``, the epoch travelling with a call, and the kernel
asking ``reconcile_operation``."""

from __future__ import annotations

import pytest

from drivebay.protocol import errors
from drivebay.protocol.errors import DriverStartError, OperationFailed, RequestError
from tests.helpers import fixture_spec, run, started


def ledger_spec(tmp_path, entrypoint="ledger:Ledger"):
    return fixture_spec(tmp_path, name="ledger", entrypoint=entrypoint)


@pytest.mark.parametrize("codec", ["msgspec", "stdlib"])
def test_op_id_reaches_the_operations_that_declare_it(tmp_path, codec):
    async def main():
        spec = fixture_spec(
            tmp_path, name="ledger", entrypoint="ledger:Ledger", extra_env={"DRIVEBAY_CODEC": codec}
        )
        async with started(spec) as proc:
            assert proc.hello_codec.startswith(codec)
            assert proc.ready is not None
            takes = {name for name, info in proc.ready.details.items() if info.takes_op_id}
            assert takes == {"write", "write_sync"}
            assert "reconcile_operation" in proc.hooks
            await proc.attach("r", {})
            # Given by the caller (a cluster's queued operation): the same id
            # twice reaches the device as the same operation.
            first = await proc.call("r", "write", {"value": 1}, op_id="op-7", epoch=3)
            again = await proc.call("r", "write_sync", {"value": 1}, op_id="op-7", epoch=4)
            assert (first, again) == (
                {"op_id": "op-7", "times": 1, "epoch": 3},
                {"op_id": "op-7", "times": 2, "epoch": 4},
            )
            # Not given: each call gets its own id, unique to this kernel process.
            own = [await proc.call("r", "write", {"value": n}) for n in range(2)]
            assert own[0]["op_id"] != own[1]["op_id"] and all(o["times"] == 1 for o in own)
            # start_call carries them the same way; an operation that does not
            # declare op_id never sees it, and the epoch arrives regardless.
            _, future = proc.start_call("r", "plain", {"value": 5}, op_id="op-8", epoch=6)
            assert await future == {"value": 5, "epoch": 6}
            assert await proc.call("r", "plain", {"value": 5}) == {"value": 5, "epoch": 0}

    run(main())


def test_a_caller_cannot_pass_op_id_itself(tmp_path):
    async def main():
        async with started(ledger_spec(tmp_path)) as proc:
            await proc.attach("r", {})
            with pytest.raises(RequestError, match="takes its op_id from the kernel"):
                await proc.call("r", "write", {"value": 1, "op_id": "mine"})
            with pytest.raises(RequestError, match="takes its op_id from the kernel"):
                proc.start_call("r", "write_sync", {"value": 1, "op_id": "mine"})
            # A kernel that does not know the operation takes op_id (as if it
            # predated the field): the runtime refuses it all the same.
            proc._op_id_ops = frozenset()
            with pytest.raises(OperationFailed) as caught:
                await proc.call("r", "write", {"value": 1, "op_id": "mine"})
            assert caught.value.type_name == errors.OP_ID_GIVEN
            assert caught.value.message == (
                "operation 'write' takes its op_id from the kernel; "
                "do not pass op_id as an argument"
            )
            # To an operation without it, op_id is an ordinary (unknown) argument.
            with pytest.raises(OperationFailed, match="unexpected keyword argument 'op_id'"):
                await proc.call("r", "plain", {"value": 1, "op_id": "mine"})

    run(main())


def test_reconcile_asks_the_driver_and_returns_or_raises(tmp_path):
    async def main():
        async with started(ledger_spec(tmp_path)) as proc:
            await proc.attach("r", {})
            await proc.call("r", "write", {"value": "v"}, op_id="op-1", epoch=2)
            settled = await proc.reconcile("r", "op-1", "write", {"value": "v"}, epoch=5)
            assert settled == {"settled": "write", "value": "v", "times": 1, "epoch": 5}
            with pytest.raises(OperationFailed) as caught:
                await proc.reconcile("r", "op-2", "write", {"value": "w"}, epoch=5)
            assert caught.value.type_name == "LookupError"
            assert caught.value.message == "write op-2 never reached the device"
            with pytest.raises(OperationFailed) as caught:
                await proc.reconcile("nobody", "op-1", "write", {})
            assert caught.value.type_name == errors.NOT_ATTACHED

    run(main())


def test_a_class_without_reconcile_says_so(tmp_path):
    async def main():
        async with started(ledger_spec(tmp_path, "ledger:Unreconciled")) as proc:
            assert "reconcile_operation" not in proc.hooks and not proc.can_reconcile
            await proc.attach("r", {})
            # op_id with a default: declared all the same.
            assert await proc.call("r", "write", {"value": 1}, op_id="op-3") == {"op_id": "op-3"}
            with pytest.raises(OperationFailed) as caught:
                await proc.reconcile("r", "op-3", "write", {"value": 1})
            assert caught.value.type_name == errors.NO_RECONCILE
            assert "has no reconcile_operation to settle 'write'" in caught.value.message

    run(main())


def test_a_misdefined_reconcile_is_refused_at_load(tmp_path):
    async def main():
        with pytest.raises(DriverStartError) as caught:
            async with started(ledger_spec(tmp_path, "ledger:BadReconcile")):
                pass
        assert "BadReconcile.reconcile_operation takes the wrong parameters" in str(caught.value)
        assert "it must take op_id, operation, args" in str(caught.value)

    run(main())
