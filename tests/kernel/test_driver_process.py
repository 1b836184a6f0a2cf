"""The kernel's side of one driver process, against real child processes."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
import signal

import msgspec
import pytest

from drivebay.kernel.drivers.process import DriverProcess
from drivebay.protocol.errors import (
    CallTimeout,
    DriverCrashed,
    DriverHung,
    DriverStartError,
    OperationFailed,
    RequestError,
)
from drivebay.sandbox.runtime_dir import PACKAGE
from tests.helpers import FAST, eventually, fixture_spec, run, started


async def journal_shows(proc: DriverProcess, event: list[str], reader: str = "b") -> None:
    """Wait until the misbehave driver's journal (shared by its instances) has ``event``."""
    async with asyncio.timeout(10):
        while event not in await proc.call(reader, "read_journal", {}):
            await asyncio.sleep(0.01)


def test_round_trip_and_handshake_facts(tmp_path):
    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            assert proc.hello is not None and proc.hello.pid in (2, proc.pid)  # 2: contained
            assert proc.hello.codec.startswith("msgspec")
            assert proc.hello_loop == "uvloop"  # the test venv has uvloop
            assert proc.ready is not None and "echo" in proc.ready.operations
            assert "health" not in proc.ready.operations and proc.ready.has_health
            await proc.attach("r1", {"size": 3})
            assert await proc.call("r1", "echo", {"value": {"a": [1, 2.5, "x", None]}}) == {
                "a": [1, 2.5, "x", None]
            }
            described = await proc.call("r1", "describe", {})
            assert described == {"resource": "r1", "properties": {"size": 3}, "pid": proc.pid}
            assert (await proc.health())["ok"] is True

    run(main())


@pytest.mark.parametrize("scheduling", ["batch", "normal"])
def test_the_driver_process_runs_with_the_scheduling_policy_it_is_given(tmp_path, scheduling):
    """batch: SCHED_BATCH; normal: left as inherited (from this process)."""
    expected = os.SCHED_BATCH if scheduling == "batch" else os.sched_getscheduler(0)

    async def main():
        async with started(fixture_spec(tmp_path, scheduling=scheduling)) as proc:
            await proc.attach("r", {})
            assert await proc.call("r", "scheduling", {}) == expected

    run(main())


@pytest.mark.parametrize("codec", ["msgspec", "stdlib"])
def test_thousand_concurrent_calls(tmp_path, codec):
    async def main():
        spec = fixture_spec(tmp_path, extra_env={"DRIVEBAY_CODEC": codec})
        async with started(spec) as proc:
            assert proc.hello_codec.startswith(codec)
            for index in range(10):
                await proc.attach(f"r{index}", {})
            results = await asyncio.gather(
                *(proc.call(f"r{n % 10}", "echo", {"value": n}) for n in range(1000))
            )
            assert results == list(range(1000))
            blob = os.urandom(200_000)
            assert await proc.call("r0", "echo", {"value": blob}) == blob

    run(main())


def test_operation_error_keeps_process(tmp_path):
    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("r", {})
            with pytest.raises(OperationFailed) as caught:
                await proc.call("r", "fail", {"message": "disk on fire"})
            assert caught.value.type_name == "ValueError"
            assert str(caught.value) == "ValueError: disk on fire"
            assert "raise ValueError(message)" in caught.value.traceback
            with pytest.raises(OperationFailed, match="UnknownOperation: driver has no operation"):
                await proc.call("r", "nope", {})
            with pytest.raises(OperationFailed, match="NotAttached"):
                await proc.call("other", "echo", {})
            with pytest.raises(OperationFailed, match="TypeError"):
                await proc.call("r", "echo", {"bogus": 1})
            assert await proc.call("r", "echo", {"value": 1}) == 1

    run(main())


def test_exit_mid_call_fails_in_flight_calls(tmp_path):
    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("a", {})
            await proc.attach("b", {})
            slow = asyncio.ensure_future(proc.call("b", "sleep", {"seconds": 60}))
            with pytest.raises(DriverCrashed, match=r"misbehave@1.0.0 exited \(exit status 7\)"):
                await proc.call("a", "exit_now", {"code": 7})
            with pytest.raises(DriverCrashed, match="exit status 7"):
                await slow
            assert await proc.wait() == 7
            with pytest.raises(DriverCrashed, match="is not running"):
                await proc.call("a", "echo", {})

    run(main())


def test_hung_driver_is_killed(tmp_path):
    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("a", {})
            with pytest.raises(DriverHung, match=r"hung: no answer to ping within 1s \(signal 9"):
                await proc.call("a", "block_loop", {"seconds": 120})
            assert proc.returncode == -signal.SIGKILL

    run(main())


def test_slow_sync_call_keeps_answering_pings(tmp_path):
    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("a", {})
            # Five ping timeouts long: a blocked loop would be killed as hung.
            thread = await proc.call("a", "slow_sync", {"seconds": 5 * FAST.ping_timeout_s})
            assert thread.startswith("driver-op")
            assert proc.alive

    run(main())


def test_prints_do_not_touch_the_channel(tmp_path):
    async def main():
        spec = fixture_spec(
            tmp_path, stdout_log=tmp_path / "out.log", stderr_log=tmp_path / "err.log"
        )
        async with started(spec) as proc:
            await proc.attach("a", {})
            assert await proc.call("a", "say", {"text": "hello\x00\xff world"}) is True
            assert await proc.call("a", "echo", {"value": 5}) == 5
            await eventually(
                lambda: "hello" in (tmp_path / "out.log").read_text("utf-8", "replace")
            )
        assert "hello" in (tmp_path / "err.log").read_text("utf-8", "replace")

    run(main())


def test_import_failure_is_a_clear_start_error(tmp_path):
    async def main():
        spec = fixture_spec(tmp_path, name="broken", entrypoint="broken:Broken")
        proc = DriverProcess(spec, FAST)
        with pytest.raises(DriverStartError) as caught:
            await proc.start()
        message = str(caught.value)
        assert message.startswith(
            "broken@1.0.0 failed to load broken:Broken: ImportError: this driver needs a module"
        )
        assert not proc.alive and proc.returncode == 3

    run(main())


def test_missing_interpreter_is_a_clear_start_error(tmp_path):
    async def main():
        spec = fixture_spec(tmp_path, python=tmp_path / "no-such-python")
        with pytest.raises(DriverStartError, match=r"cannot run .*no-such-python: No such file"):
            await DriverProcess(spec, FAST).start()

    run(main())


def test_child_that_dies_before_hello(tmp_path):
    async def main():
        fake = tmp_path / "fake-python"
        fake.write_text("#!/bin/sh\necho 'interpreter exploded' >&2\nexit 9\n")
        fake.chmod(0o755)
        spec = fixture_spec(tmp_path, python=fake)
        with pytest.raises(
            DriverStartError,
            match=r"exited \(exit status 9\) before saying hello; stderr: interpreter exploded",
        ):
            await DriverProcess(spec, FAST).start()

    run(main())


def test_silent_child_is_killed_at_the_start_deadline(tmp_path):
    async def main():
        fake = tmp_path / "fake-python"
        fake.write_text("#!/bin/sh\nexec sleep 600\n")
        fake.chmod(0o755)
        spec = fixture_spec(tmp_path, python=fake)
        proc = DriverProcess(spec, msgspec.structs.replace(FAST, start_s=0.5))
        with pytest.raises(DriverStartError, match=r"did not finish its handshake within 0\.5s"):
            await proc.start()
        assert proc.returncode == -signal.SIGKILL

    run(main())


def test_protocol_version_mismatch_is_refused(tmp_path):
    async def main():
        runtime = fixture_spec(tmp_path).runtime_dir
        # A runtime from the future: copy it and make it speak only version 99.
        future = tmp_path / "future-runtime"
        shutil.copytree(runtime, future)
        versions = future / PACKAGE / "versions.py"
        versions.chmod(0o644)
        text = versions.read_text().replace("PROTOCOL_MIN = 1", "PROTOCOL_MIN = 99")
        versions.write_text(text.replace("PROTOCOL_MAX = 1", "PROTOCOL_MAX = 99"))
        spec = dataclasses.replace(fixture_spec(tmp_path), runtime_dir=future)
        proc = DriverProcess(spec, FAST)
        with pytest.raises(
            DriverStartError,
            match=r"no common protocol version: kernel speaks 1\.\.1, "
            r"driver runtime speaks 99\.\.99",
        ):
            await proc.start()
        assert proc.returncode == 2  # the child read the refusal and exited

    run(main())


@pytest.mark.parametrize(
    ("data_hex", "reason"),
    [
        ("7fffffff", "over the limit"),  # announces a 2 GiB frame
        ("00000003c1c1c1", "invalid message"),  # 0xc1 is never valid MessagePack
        ("0000000192", "invalid message"),  # a 2-element array cut short
    ],
)
def test_bad_frames_from_the_child(tmp_path, data_hex, reason):
    async def main():
        async with started(fixture_spec(tmp_path, max_frame=1 << 20)) as proc:
            await proc.attach("a", {})
            with pytest.raises(DriverCrashed, match=f"protocol error: .*{reason}"):
                await proc.call("a", "raw_channel_write", {"data_hex": data_hex})
            assert proc.returncode == -signal.SIGKILL

    run(main())


def test_staged_stop_of_driver_ignoring_sigterm(tmp_path):
    async def main():
        # Pings far apart, so the stages (not the hang detector) end it.
        patient = msgspec.structs.replace(FAST, ping_interval_s=600, ping_timeout_s=600)
        proc = DriverProcess(fixture_spec(tmp_path), patient)
        await proc.start()
        await proc.attach("a", {})
        assert await proc.call("a", "ignore_sigterm", {}) is True
        blocked = asyncio.ensure_future(proc.call("a", "block_loop", {"seconds": 600}))
        await asyncio.sleep(0)  # let the call go out
        code = await proc.stop(drain=0.2)
        assert code == -signal.SIGKILL
        with pytest.raises(DriverCrashed):
            await blocked

    run(main())


def test_drain_exits_zero_after_in_flight_calls(tmp_path):
    async def main():
        proc = DriverProcess(fixture_spec(tmp_path), FAST)
        await proc.start()
        await proc.attach("a", {})
        running = asyncio.ensure_future(proc.call("a", "sleep", {"seconds": 0.3}))
        await asyncio.sleep(0)
        assert await proc.stop() == 0
        assert await running == 0.3

    run(main())


def test_drain_does_not_wait_for_a_stuck_sync_call(tmp_path):
    """Past the drain deadline the child exits 0, without waiting for the
    thread of a sync call that will not end and without detaching its
    resource beside it; the call gets its answer."""

    async def main():
        patient = msgspec.structs.replace(FAST, ping_interval_s=600, ping_timeout_s=600)
        proc = DriverProcess(fixture_spec(tmp_path), patient)
        await proc.start()
        await proc.attach("a", {})
        await proc.attach("b", {})
        stuck = asyncio.ensure_future(proc.call("a", "hold", {"gate": "never"}))
        await journal_shows(proc, ["start", "a", "never"])
        assert await proc.stop(drain=4) == 0  # 2 s for calls, the rest to spare
        with pytest.raises((OperationFailed, DriverCrashed)):
            await stuck

    run(main())


def test_stop_when_cancelled_still_reaps(tmp_path):
    async def main():
        patient = msgspec.structs.replace(FAST, ping_interval_s=600, ping_timeout_s=600)
        proc = DriverProcess(fixture_spec(tmp_path), patient)
        await proc.start()
        await proc.attach("a", {})
        await proc.call("a", "ignore_sigterm", {})
        blocked = asyncio.ensure_future(proc.call("a", "block_loop", {"seconds": 600}))
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(proc.stop(drain=30))
        await eventually(lambda: proc._stopping)
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert not proc.alive and proc.returncode == -signal.SIGKILL
        with pytest.raises(DriverCrashed):
            await blocked

    run(main())


def test_call_timeout_cancels_in_driver(tmp_path):
    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("a", {})
            with pytest.raises(CallTimeout, match=r"sleep on a took longer than 0\.2s"):
                await proc.call("a", "sleep", {"seconds": 60}, timeout=0.2)
            assert await proc.call("a", "echo", {"value": 2}) == 2

    run(main())


def test_a_sync_call_given_up_on_is_over_only_when_its_thread_returns(tmp_path):
    """A thread cannot be cancelled: the caller gets CallTimeout at once, but
    ``finished`` resolves only when the child has really ended the call."""

    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("a", {})
            await proc.attach("b", {})
            request_id, reply = proc.start_call("a", "hold", {"gate": "g"}, timeout=0.3)
            with pytest.raises(CallTimeout, match=r"hold on a took longer than 0\.3s"):
                await reply
            ended = proc.finished(request_id)
            assert ended is not None  # still running in its thread
            assert ["start", "a", "g"] in await proc.call("b", "read_journal", {})
            assert not ended.done()
            await proc.call("b", "release", {"gate": "g"})
            await asyncio.wait_for(ended, 10)
            assert proc.finished(request_id) is None
            journal = await proc.call("b", "read_journal", {})
            assert [e for e in journal if e[0] in ("start", "release", "end")] == [
                ["start", "a", "g"],
                ["release", "g"],
                ["end", "a", "g"],
            ]

    run(main())


def test_an_attach_finished_after_its_cancel_is_detached_by_the_child(tmp_path):
    """A driver that swallows the cancellation of its attach: the child
    detaches that instance itself, as the kernel no longer knows of it."""

    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("b", {})
            attach = asyncio.ensure_future(proc.attach("a", {"attach_delay": 60, "stubborn": True}))

            await journal_shows(proc, ["attach-start", "a"])
            attach.cancel()
            with pytest.raises(asyncio.CancelledError):
                await attach
            await journal_shows(proc, ["detach", "a"])
            assert await proc.call("b", "attached_here", {}) == ["b"]
            with pytest.raises(OperationFailed, match="NotAttached"):
                await proc.call("a", "echo", {})

    run(main())


def test_a_sync_attach_finished_after_its_cancel_is_detached_by_the_child(tmp_path):
    """A sync attach cannot be stopped: the child waits for its thread, then
    detaches that instance, as the kernel no longer knows of it."""

    async def main():
        async with started(fixture_spec(tmp_path, entrypoint="misbehave:SyncAttach")) as proc:
            await proc.attach("b", {})
            attach = asyncio.ensure_future(proc.attach("a", {"gate": "ga"}))

            await journal_shows(proc, ["attach-start", "a"])
            attach.cancel()
            with pytest.raises(asyncio.CancelledError):
                await attach
            await proc.call("b", "release", {"gate": "ga"})
            await journal_shows(proc, ["detach", "a"])
            assert await proc.call("b", "attached_here", {}) == ["b"]

    run(main())


def test_errors_and_results_that_cannot_travel_as_they_are(tmp_path):
    """Each call still gets its one answer, and the driver keeps serving."""

    async def main():
        async with started(fixture_spec(tmp_path, max_frame=1 << 20)) as proc:
            await proc.attach("a", {})
            with pytest.raises(OperationFailed, match=r"could not be read: str\(\) of this"):
                await proc.call("a", "broken_error", {})
            with pytest.raises(OperationFailed, match=r"FileNotFoundError: /data/caf\\udce9"):
                await proc.call("a", "undecodable_error", {})
            with pytest.raises(OperationFailed, match=r"ResultTooLarge: the result takes 2097"):
                await proc.call("a", "huge", {"megabytes": 2})
            assert await proc.call("a", "channel_inheritable", {}) is False
            assert "Settings" not in proc.ready.operations
            assert await proc.call("a", "echo", {"value": 1}) == 1

    run(main())


def test_arguments_nested_deeper_than_a_stdlib_child_reads_fail_alone(tmp_path):
    """A child without msgspec reads 256 levels; the kernel refuses deeper
    arguments itself instead of sending a frame that would end the channel."""

    async def main():
        spec = fixture_spec(tmp_path, extra_env={"DRIVEBAY_CODEC": "stdlib"})
        async with started(spec) as proc:
            await proc.attach("a", {})
            deep: object = 1
            for _ in range(300):
                deep = [deep]
            with pytest.raises(RequestError, match="nest deeper than 252 levels"):
                await proc.call("a", "echo", {"value": deep})
            with pytest.raises(RequestError, match="nest deeper"):
                proc.start_call("a", "echo", {"value": deep})
            shallow: object = 1
            for _ in range(200):
                shallow = [shallow]
            assert await proc.call("a", "echo", {"value": shallow}) == shallow

    run(main())


def test_attach_failure_and_health_failure(tmp_path):
    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            with pytest.raises(OperationFailed, match="RuntimeError: refusing to attach"):
                await proc.attach("bad", {"fail_attach": True})
            with pytest.raises(OperationFailed, match="NotAttached"):
                await proc.call("bad", "echo", {})

    run(main())


def test_driver_logging_reaches_kernel_log(tmp_path, caplog):
    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("a", {})
            await proc.call("a", "say", {"text": "via logging"})
            await eventually(lambda: "logged: via logging" in caplog.text)

    with caplog.at_level("INFO", logger="drivebay.driver"):
        run(main())
    assert "misbehave@1.0.0: misbehave: logged: via logging" in caplog.text


def test_attach_past_its_deadline_is_cancelled_in_the_child(tmp_path):
    async def main():
        quick = msgspec.structs.replace(FAST, call_s=0.3)
        async with started(fixture_spec(tmp_path), quick) as proc:
            with pytest.raises(CallTimeout, match=r"attach of a took longer than 0\.3s"):
                await proc.attach("a", {"attach_delay": 5})
            # The child dropped that instance: a new attach is not "already attached".
            await proc.attach("a", {})
            assert (await proc.call("a", "describe", {}))["properties"] == {}

    run(main())


def test_unencodable_result_is_an_error_not_a_timeout(tmp_path):
    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("a", {})
            with pytest.raises(OperationFailed, match=r"UnencodableResult: the result \(object\)"):
                await proc.call("a", "unencodable", {})
            assert await proc.call("a", "echo", {"value": 1}) == 1

    run(main())


def test_calls_without_a_task_each(tmp_path):
    """start_call: a window of futures, answered in full; cancel_call reaches the driver."""

    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("a", {})
            calls = [proc.start_call("a", "echo", {"value": n}) for n in range(200)]
            assert len({request_id for request_id, _ in calls}) == 200
            assert await asyncio.gather(*(future for _, future in calls)) == list(range(200))
            request_id, sleeping = proc.start_call("a", "sleep", {"seconds": 60})
            proc.cancel_call(request_id)
            assert sleeping.cancelled()
            proc.cancel_call(request_id)  # a second time: nothing left to cancel
            # Drain waits for calls in flight: it ends at once only if the sleep was cancelled.
            assert await proc.stop(drain=15) == 0
            with pytest.raises(DriverCrashed, match="not running"):
                proc.start_call("a", "echo", {})

    run(main())


def test_a_spawn_failure_blames_the_party_at_fault():
    """Out of descriptors is the daemon's limit, not the interpreter's fault."""
    from drivebay.kernel.drivers.process import _spawn_failure

    def said(code: int) -> str:
        return _spawn_failure("d@1", "/env/bin/python", OSError(code, os.strerror(code)))

    assert said(errno.EMFILE) == (
        "d@1: drivebayd has no descriptor left to start it (Too many open files); "
        "raise LimitNOFILE (the hard RLIMIT_NOFILE) or run fewer drivers"
    )
    assert "the host refused a new process" in said(errno.EAGAIN)
    assert said(errno.ENOENT) == "d@1: cannot run /env/bin/python: No such file or directory"


def test_a_drivers_log_text_is_escaped_in_the_daemon_log(tmp_path, caplog):
    """A driver's log record is its own text: a newline or an escape in it
    cannot forge a line of the daemon's log or reach an operator's terminal."""

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "logged:" in r.getMessage()]

    async def main():
        async with started(fixture_spec(tmp_path)) as proc:
            await proc.attach("a", {})
            await proc.call("a", "say", {"text": "x\n2026-01-01 ERROR forged\x1b[2J"})
            await eventually(lambda: bool(said()))

    run(main())
    assert said() == ["misbehave@1.0.0: misbehave: logged: x\\n2026-01-01 ERROR forged\\x1b[2J"]
