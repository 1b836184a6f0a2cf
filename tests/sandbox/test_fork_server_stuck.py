"""A template that takes no request or answers none (stopped, stuck):
starts of its interpreter fail within their bound, the template is replaced,
and nothing it made is left unreaped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket

import pytest

from drivebay.protocol.fork_template import CHANNEL_FD, FD_CHANNEL_FD
from drivebay.sandbox import fork_server
from drivebay.sandbox.spawn import child_environment, spawn_child
from tests.helpers import eventually, fixture_spec, run


def our_children() -> set[int]:
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as listing:
            found.update(int(pid) for pid in listing.read().split())
    return found


def kill_and_reap(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def test_a_stopped_template_is_replaced_and_leaves_no_child(tmp_path, monkeypatch):
    monkeypatch.setattr(fork_server, "REPLY_TIMEOUT_S", 0.5)

    async def main():
        spec = fixture_spec(tmp_path, spawn="fork-server")
        assert spec.templates is not None
        try:
            before = our_children()
            await spec.templates.template(spec.python, spec.runtime_dir)
            (stuck,) = spec.templates.pids()
            os.kill(stuck, signal.SIGSTOP)
            with pytest.raises(TimeoutError):
                await spawn_child(spec)
            assert not alive(stuck)  # killed and reaped
            child = await spawn_child(spec)  # from a new template
            try:
                (again,) = spec.templates.pids()
                assert again != stuck
                assert our_children() - before == {again, child.pid}
            finally:
                child.signal_group(signal.SIGKILL)
                await child.exited
                child.close()
        finally:
            await spec.templates.close()

    run(main())


def test_a_forked_child_leads_its_group_before_it_reports(tmp_path):
    """Once its pid is reported the child must lead a process group of its
    own: the daemon signals the group (killpg), and a kill that came between
    the report and a later ``setsid`` missed the child (a stop that waited for
    its exit forever). The reply socket is full here, so the child blocks on
    its report: what it did before is all it did."""

    async def main():
        spec = fixture_spec(tmp_path, spawn="fork-server", containment="process_group")
        assert spec.templates is not None
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        held = [ours, theirs, a, b, c, d]
        child = 0
        try:
            template = await spec.templates.template(spec.python, spec.runtime_dir)
            before = our_children()
            theirs.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    theirs.send(b"x" * 4096)
            theirs.setblocking(True)
            env = child_environment(spec, CHANNEL_FD, FD_CHANNEL_FD)
            request = json.dumps({"env": env, "cwd": str(tmp_path)}).encode()
            assert template._control is not None
            fds = [theirs.fileno(), *(w for _, w in pipes), b.fileno(), d.fileno()]
            await fork_server._send(loop, template._control, request, fds)
            await eventually(lambda: len(our_children() - before) == 1)
            (child,) = our_children() - before
            await eventually(lambda: os.getpgid(child) == child)
        finally:
            if child:
                kill_and_reap(child)
            for thing in held:
                thing.close()
            for r, w in pipes:
                os.close(r)
                os.close(w)
            await spec.templates.close()

    run(main())
