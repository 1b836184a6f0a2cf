"""``spawn_child`` releases everything it created when any step fails: the
child (killed and reaped), the channel's ends, the pipes and their
transports, the pidfd. The suite's leak guard (tests/conftest.py) checks that
no descriptor and no child process is left; each test also checks that the
numbers freed can be used again (none is still held by a transport)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from typing import Any

import pytest

from drivebay.sandbox import spawn
from drivebay.sandbox.spawn import spawn_child
from tests.helpers import assert_numbers_reusable, eventually, fixture_spec, run


class Broken(OSError):
    def __init__(self) -> None:
        super().__init__(errno.EMFILE, "injected failure")


def failing_on(call: int, real: Callable[..., Any], error: BaseException) -> Callable[..., Any]:
    """``real``, except that its ``call``-th call (1: the first) raises ``error``."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            raise error
        return real(*args, **kwargs)

    return wrapper


class LoopFailing:
    """The running loop, except that one ``connect_read_pipe`` call fails."""

    def __init__(self, loop: asyncio.AbstractEventLoop, call: int, error: BaseException) -> None:
        self._loop = loop
        self._calls = 0
        self._call, self._error = call, error

    async def connect_read_pipe(self, *args: Any) -> Any:
        self._calls += 1
        if self._calls == self._call:
            raise self._error
        return await self._loop.connect_read_pipe(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


STEPS = {
    "popen": lambda: ("_popen", failing_on(1, spawn._popen, Broken())),
    "pidfd": lambda: ("os.pidfd_open", failing_on(1, os.pidfd_open, Broken())),
    "stdout capture": lambda: ("OutputCapture", failing_on(1, spawn.OutputCapture, Broken())),
    "stderr capture": lambda: ("OutputCapture", failing_on(2, spawn.OutputCapture, Broken())),
    "stdout reader": lambda: ("PipeReader", failing_on(1, spawn.PipeReader, Broken())),
    "stderr reader": lambda: ("PipeReader", failing_on(2, spawn.PipeReader, Broken())),
    "child watch": lambda: ("ChildProcess", failing_on(1, spawn.ChildProcess, Broken())),
}


def open_fds() -> set[int]:
    """The descriptors open now (not the one the listing itself used)."""
    listed = {int(name) for name in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}")}


async def fds_before() -> set[int]:
    """The descriptors open before the start, once the loop holds what it
    keeps for its lifetime (uvloop opens /dev/null the first time one of its
    pipe transports is closed)."""
    start = open_fds()
    read, write = os.pipe()
    os.close(write)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(read, "rb"))
    transport.close()
    await eventually(lambda: not any(target(fd).startswith("pipe:") for fd in open_fds() - start))
    return open_fds()


def target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return ""


async def assert_released(before: set[int]) -> None:
    """Every descriptor the failed start opened is closed while the loop still
    runs (a transport nobody closed would hold its pipe until the loop ends).
    A transport closes its pipe on the loop's next turns: wait for that."""
    try:
        await eventually(lambda: open_fds() <= before, deadline=5)
    except AssertionError:
        left = {fd: target(fd) for fd in open_fds() - before}
        raise AssertionError(f"left open: {left}") from None
    assert_numbers_reusable(asyncio.get_running_loop())


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_failed_step_leaves_nothing_behind(tmp_path, monkeypatch, step):
    async def main() -> None:
        name, replacement = STEPS[step]()
        target = os if name.startswith("os.") else spawn
        spec = fixture_spec(tmp_path)
        before = await fds_before()
        with monkeypatch.context() as patch:
            patch.setattr(target, name.removeprefix("os."), replacement)
            with pytest.raises(Broken):
                await spawn_child(spec)
        await assert_released(before)

    run(main())


@pytest.mark.parametrize("call", [1, 2])
@pytest.mark.parametrize("error", [Broken, asyncio.CancelledError])
def test_a_pipe_that_cannot_be_connected_leaves_nothing_behind(tmp_path, monkeypatch, call, error):
    async def main() -> None:
        failing = LoopFailing(asyncio.get_running_loop(), call, error())
        spec = fixture_spec(tmp_path)
        before = await fds_before()
        with monkeypatch.context() as patch:
            patch.setattr(spawn.asyncio, "get_running_loop", lambda: failing)
            with pytest.raises(error):
                await spawn_child(spec)
        await assert_released(before)

    run(main())
