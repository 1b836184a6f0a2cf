"""Drivers forked from a template (``spawn: fork-server``), against real
processes: what the child gets, whose child it is, its exit, and a template
that dies."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from drivebay.kernel.drivers.process import DriverProcess
from drivebay.sandbox.fork_server import Templates
from drivebay.sandbox.spawn import spawn_child
from tests.helpers import FAST, eventually, fixture_spec, run, started


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def command_line(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().rstrip(b"\0")


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def open_fds(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def fd_kinds(pid: int) -> list[str]:
    """What its descriptors are (``socket``, ``pipe``, a path...), sorted."""
    found = []
    for fd in open_fds(pid):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        found.append(target.split(":")[0] if ":[" in target else target)
    return sorted(found)


def test_a_forked_driver_is_set_up_as_an_exec_one_and_is_our_child(tmp_path):
    async def main():
        spec = fixture_spec(
            tmp_path, spawn="fork-server", extra_env={"ACME": "1"}, containment="pid_namespace"
        )
        async with started(spec) as proc:
            await proc.attach("a", {})
            assert await proc.call("a", "env", {"key": "ACME"}) == "1"
            assert await proc.call("a", "env", {"key": "DRIVEBAY_CHANNEL_FD"}) == "3"
            assert await proc.call("a", "channel_inheritable", {}) is False
            assert proc.hello is not None and proc.hello.pid == 2  # contained
            assert proc.group is not None and proc.pid is not None
            assert parent_of(proc.group) == os.getpid()  # its PID 1 is the daemon's child
            assert parent_of(proc.pid) == proc.group
            assert os.readlink(f"/proc/{proc.pid}/cwd") == str(tmp_path)
            # Its PID 1 holds stderr and the status pipe, nothing of the template's.
            assert open_fds(proc.group) == {0, 1, 2, 5}
            async with started(fixture_spec(tmp_path, containment="pid_namespace")) as other:
                await other.attach("a", {})
                assert other.pid is not None
                assert fd_kinds(proc.pid) == fd_kinds(other.pid)  # as the exec'd driver's
            assert os.readlink(f"/proc/{proc.pid}/fd/0") == os.devnull
            assert os.getsid(proc.pid) == proc.group  # a session of its own
            assert command_line(proc.pid) == b"drivebay misbehave@1.0.0"  # what ps shows
            assert command_line(proc.group) == b"drivebay-init misbehave@1.0.0"
            who = await proc.call("a", "whoami", {})
            assert (who["uid"], who["gid"]) == (os.getuid(), os.getgid())

    run(main())


@pytest.mark.parametrize("containment", ["pid_namespace", "process_group"])
def test_the_driver_exit_status_and_cpu_time_reach_the_daemon(tmp_path, containment):
    """Its PID 1 cannot die of the driver's signal: the status pipe carries it."""

    async def main():
        spec = fixture_spec(tmp_path, spawn="fork-server", containment=containment)
        async with started(spec) as proc:
            await proc.attach("a", {})
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await proc.wait() == -signal.SIGTERM
            assert proc._child is not None and proc._child.cpu_s > 0
            assert proc.exit_reason().startswith("exited (signal 15 (SIGTERM))")

    run(main())


def test_a_killed_template_takes_no_driver_with_it_and_is_started_again(tmp_path):
    async def main():
        templates = Templates()
        spec = fixture_spec(tmp_path, templates=templates)
        try:
            first = DriverProcess(spec, FAST)
            await first.start()
            try:
                (template,) = templates.pids()
                os.kill(template, signal.SIGKILL)
                await eventually(lambda: not templates.pids())  # reaped by the daemon
                async with started(spec) as second:  # from a new template
                    (again,) = templates.pids()
                    assert again != template
                    await second.attach("b", {})
                    assert await second.call("b", "echo", {"value": 2}) == 2
                await first.attach("a", {})
                assert await first.call("a", "echo", {"value": 1}) == 1
                assert first.alive
            finally:
                await first.stop()
        finally:
            await templates.close()

    run(main())


def test_a_forked_spawn_cancelled_midway_leaves_nothing_behind(tmp_path):
    async def main():
        spec = fixture_spec(tmp_path, spawn="fork-server")
        assert spec.templates is not None
        try:
            await spec.templates.template(spec.python, spec.runtime_dir)
            before = set(os.listdir("/proc/self/fd"))
            for turns in range(6):  # cancelled at each await the start makes
                starting = asyncio.ensure_future(spawn_child(spec))
                for _ in range(turns + 1):
                    await asyncio.sleep(0)
                starting.cancel()
                try:
                    child = await starting
                except asyncio.CancelledError:
                    continue
                child.signal_group(signal.SIGKILL)
                await child.exited
                child.close()
            await asyncio.sleep(0.05)  # transports close on the next loop passes
            assert set(os.listdir("/proc/self/fd")) <= before
        finally:
            await spec.templates.close()

    run(main())


def test_the_template_of_a_removed_environment_is_ended(tmp_path):
    async def main():
        spec = fixture_spec(tmp_path, spawn="fork-server")
        assert spec.templates is not None
        try:
            await spec.templates.template(spec.python, spec.runtime_dir)
            (pid,) = spec.templates.pids()
            await spec.templates.retire([tmp_path / "elsewhere"])
            assert spec.templates.pids() == [pid]
            await spec.templates.retire([spec.python.parent.parent])
            assert spec.templates.pids() == []
            assert not alive(pid)  # reaped
        finally:
            await spec.templates.close()

    run(main())


def test_many_forks_at_once_all_succeed(tmp_path):
    """More requests at once than the template's socket holds: each sender
    waits its turn for room, none is forgotten (the loop has one writer
    callback per descriptor)."""

    async def main():
        spec = fixture_spec(tmp_path, spawn="fork-server")
        assert spec.templates is not None
        children = []
        try:
            template = await spec.templates.template(spec.python, spec.runtime_dir)
            assert template._control is not None  # a small buffer: full after a few requests
            template._control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            results = await asyncio.gather(
                *(spawn_child(spec) for _ in range(20)), return_exceptions=True
            )
            children = [c for c in results if not isinstance(c, BaseException)]
            assert len(children) == 20, [r for r in results if isinstance(r, BaseException)][:3]
        finally:
            for child in children:
                child.signal_group(signal.SIGKILL)
                await child.exited
                child.close()
            await spec.templates.close()

    run(main())
