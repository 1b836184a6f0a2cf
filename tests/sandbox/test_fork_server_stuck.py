"""A template that takes no request or answers none (stopped, stuck):
starts of its interpreter fail within their bound, the template is replaced,
and nothing it made is left unreaped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket

import pytest

from drivebay.protocol.fork_template import CHANNEL_FD, EXIT_SETUP, FD_CHANNEL_FD
from drivebay.sandbox import fork_server
from drivebay.sandbox.spawn import child_environment, spawn_child
from tests.helpers import eventually, fixture_spec, run


def our_children() -> set[int]:
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as listing:
            found.update(int(pid) for pid in listing.read().split())
    return found


def awaiting_answers() -> int:
    """How many forks have sent their request and wait for the child's pid
    (a task whose chain of awaited coroutines reaches ``_answer``)."""

    def names(task: asyncio.Task[object]) -> list[str]:
        found, coro = [], task.get_coro()
        while coro is not None and hasattr(coro, "cr_code"):
            found.append(coro.cr_code.co_name)
            coro = coro.cr_await
        return found

    return sum("_answer" in names(task) for task in asyncio.all_tasks())


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
            fds = [theirs.fileno(), *(w for _, w in pipes), b.fileno(), d.fileno()]
            await template._send(request, fds)
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


def test_a_template_ended_while_a_start_waits_for_room_on_its_socket(tmp_path, monkeypatch):
    """The template's socket is full (it is stopped) and a start waits for
    room when the template is ended (its environment removed; the same at
    the daemon's end): that start is told at once, and goes to a new
    template; none ends in anything but a child or a one-line OSError.
    (Closing the socket under the waiting sender left it to its timeout, then
    to a ValueError from the loop.)"""
    monkeypatch.setattr(fork_server, "REPLY_TIMEOUT_S", 3.0)

    async def main():
        spec = fixture_spec(tmp_path, spawn="fork-server")
        assert spec.templates is not None
        children = []
        try:
            template = await spec.templates.template(spec.python, spec.runtime_dir)
            assert template._control is not None
            template._control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            os.kill(template.pid, signal.SIGSTOP)
            starts = [asyncio.ensure_future(spawn_child(spec)) for _ in range(20)]
            await eventually(template._sending.locked)  # one waits for room
            ending = asyncio.ensure_future(spec.templates.retire([spec.python.parent.parent]))
            await eventually(lambda: template._control is None)
            os.kill(template.pid, signal.SIGKILL)  # stopped: it cannot see its socket closed
            await ending
            results = await asyncio.gather(*starts, return_exceptions=True)
            children = [r for r in results if not isinstance(r, BaseException)]
            failures = [r for r in results if isinstance(r, BaseException)]
            assert children  # the waiting one, at least, from a new template
            assert all(type(f) is OSError for f in failures), failures
        finally:
            for child in children:
                child.signal_group(signal.SIGKILL)
                await child.exited
                child.close()
            await spec.templates.close()

    run(main())


def test_starts_queued_at_a_template_that_dies_go_to_a_new_one(tmp_path):
    """Requests the template had not yet read when it died (killed here,
    stopped so that they queue) are not lost: each goes to a new template
    (they failed with "could not fork a driver process")."""

    async def main():
        spec = fixture_spec(tmp_path, spawn="fork-server")
        assert spec.templates is not None
        results: list[object] = []
        try:
            template = await spec.templates.template(spec.python, spec.runtime_dir)
            os.kill(template.pid, signal.SIGSTOP)
            starts = [asyncio.ensure_future(spawn_child(spec)) for _ in range(6)]
            await eventually(lambda: awaiting_answers() == 6)  # all sent, none read
            os.kill(template.pid, signal.SIGKILL)
            results = await asyncio.gather(*starts, return_exceptions=True)
            assert not [r for r in results if isinstance(r, BaseException)]
        finally:
            for child in results:
                if not isinstance(child, BaseException):
                    child.signal_group(signal.SIGKILL)  # type: ignore[attr-defined]
                    await child.exited  # type: ignore[attr-defined]
                    child.close()  # type: ignore[attr-defined]
            await spec.templates.close()

    run(main())


def test_a_child_that_dies_before_it_reports_is_reaped(tmp_path, monkeypatch):
    """The child cannot be set up (here: the template's descriptor limit is
    below the numbers it moves its descriptors to) and exits before it
    writes its pid: the template reports it too, so the daemon reaps it and
    the start fails with its exit status (it was a zombie of the daemon
    that nobody knew, and the start waited for the template's death)."""
    monkeypatch.setattr(fork_server, "REPLY_TIMEOUT_S", 1.0)

    async def main():
        spec = fixture_spec(tmp_path, spawn="fork-server")
        assert spec.templates is not None
        try:
            template = await spec.templates.template(spec.python, spec.runtime_dir)
            before = our_children()
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.prlimit(template.pid, resource.RLIMIT_NOFILE, (32, hard))
            try:
                child = await spawn_child(spec)
            except OSError:
                child = None
            assert child is not None, "the child's pid was never known"
            assert await child.exited == EXIT_SETUP
            child.close()
            assert our_children() - before == set()
        finally:
            await spec.templates.close()

    run(main())
