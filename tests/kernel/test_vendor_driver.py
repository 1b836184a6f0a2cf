"""What a vendor's driver meets: its operations described, and deadlines
that say what happened to a sync operation (real child processes)."""

from __future__ import annotations

import pytest

from drivebay.protocol.errors import CallTimeout
from drivebay.protocol.messages import OperationInfo
from tests.helpers import fixture_spec, run, started


def namesake(tmp_path):
    return fixture_spec(tmp_path, name="namesake", entrypoint="namesake:Namesake")


def test_ready_describes_each_operation(tmp_path):
    async def main():
        async with started(namesake(tmp_path)) as proc:
            assert proc.ready is not None
            details = proc.ready.details
            assert sorted(details) == sorted(proc.ready.operations)
            assert details["resize"] == OperationInfo(
                "(name: str, size_gb: int = 1) -> dict", "Grow volume NAME to SIZE_GB.", True
            )
            assert details["wait_gate"] == OperationInfo(
                "(seconds: float) -> bool", "Wait (in a thread) until the gate opens.", False
            )
            assert details["open_gate"] == OperationInfo("()", "", True)

    run(main())


def test_a_sync_operation_past_its_deadline_is_said_to_run_on_in_its_thread(tmp_path):
    async def main():
        async with started(namesake(tmp_path)) as proc:
            await proc.attach("a", {})
            await proc.attach("b", {})
            request_id, reply = proc.start_call("a", "wait_gate", {"seconds": 60}, timeout=0.2)
            with pytest.raises(CallTimeout) as caught:
                await reply
            message = str(caught.value)
            assert message.startswith("namesake@1.0.0: wait_gate on a took longer than 0.2s")
            assert "was cancelled" not in message
            assert "still runs in its thread" in message and "async" in message
            ended = proc.finished(request_id)
            assert ended is not None
            await proc.call("b", "open_gate", {})
            await ended

    run(main())
