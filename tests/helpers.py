"""Shared helpers for tests: run a coroutine on uvloop, start fixture drivers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from drivebay.kernel.config import TimeoutSettings
from drivebay.kernel.drivers.process import DriverProcess
from drivebay.sandbox.fork_server import Templates
from drivebay.sandbox.runtime_dir import ensure_runtime_dir
from drivebay.sandbox.spawn import SpawnSpec

FIXTURES = Path(__file__).parent / "fixtures"
T = TypeVar("T")


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid``, made by any of its threads (the daemon
    spawns drivers from a worker thread: the main thread's list lacks them)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    return found


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def fixture_spec(
    tmp_path: Path, name: str = "misbehave", entrypoint: str = "misbehave:Misbehave", **kw: Any
) -> SpawnSpec:
    """A spec for a fixture driver; ``spawn="fork-server"`` forks it from a
    template (``started`` ends the template; else ``await spec.templates.close()``)."""
    if kw.pop("spawn", "exec") == "fork-server":
        kw["templates"] = Templates()
    return SpawnSpec(
        python=Path(kw.pop("python", sys.executable)),
        runtime_dir=ensure_runtime_dir(tmp_path / "state"),
        entrypoint=entrypoint,
        driver=name,
        version=kw.pop("version", "1.0.0"),
        cwd=tmp_path,
        src=FIXTURES / name / "src",
        **kw,
    )


FAST = TimeoutSettings(
    start_s=20, ping_interval_s=0.2, ping_timeout_s=1.0, call_s=20, drain_s=2, term_s=2, kill_s=5
)


@contextlib.asynccontextmanager
async def started(
    spec: SpawnSpec, timeouts: TimeoutSettings = FAST
) -> AsyncIterator[DriverProcess]:
    proc = DriverProcess(spec, timeouts)
    try:
        await proc.start()
        try:
            yield proc
        finally:
            await proc.stop()
    finally:
        if spec.templates is not None:
            await spec.templates.close()


async def eventually(check: Callable[[], bool], deadline: float = 10.0) -> None:
    """Wait until ``check()`` is true, yielding to the loop; fail past the deadline."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline}s")
        await asyncio.sleep(0.01)


def assert_numbers_reusable(loop: asyncio.AbstractEventLoop) -> None:
    """The numbers a failed start freed come first: each must be usable."""
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        for pair in pairs:
            for end in pair:
                loop.add_reader(end.fileno(), lambda: None)
                loop.remove_reader(end.fileno())
    finally:
        for pair in pairs:
            for end in pair:
                end.close()


# Tests of what a driver process gets, run with each way of making one.
SPAWN_MODES = pytest.mark.parametrize("spawn", ["exec", "fork-server"])
