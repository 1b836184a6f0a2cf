"""Suite-wide guards: no test may leak file descriptors or child processes,
no property test may fail for being slow, and no test may import our code
under a second name (``kernel`` beside ``drivebay.kernel``)."""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import hypothesis
import pytest
import uvloop

# Hypothesis fails an example that takes over 200 ms by default: on a loaded
# 2-CPU machine that failed test_any_valid_bag_round_trips_unchanged once.
# Speed is for the benchmarks; a test's verdict must not depend on it.
hypothesis.settings.register_profile("drivebay", deadline=None)
hypothesis.settings.load_profile("drivebay")

SECOND_NAMES = frozenset({"kernel", "sandbox", "protocol"})


class SecondNameRefused(importlib.abc.MetaPathFinder):
    """pytest puts the repository's root on ``sys.path`` (``tests`` is a
    package), where the folders ``kernel/``, ``sandbox/`` and ``protocol/``
    would import as top-level packages: a second copy of every module, with
    its own classes and state. Only ``drivebay.…`` may be imported."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in SECOND_NAMES:
            raise ModuleNotFoundError(
                f"import drivebay.{fullname}, not {fullname}: our code has one name",
                name=fullname,
            )
        return None


sys.meta_path.insert(0, SecondNameRefused())


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _children() -> set[int]:
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            with open(task / "children") as handle:
                found.update(int(pid) for pid in handle.read().split())
        except FileNotFoundError:  # a thread that ended while we looked
            continue
    return found


@pytest.fixture(scope="session")
def loop_globals_ready() -> None:
    """libuv opens a process-wide pipe the first time a loop runs: open it
    before the first leak check, so it is not blamed on that test."""
    uvloop.run(asyncio.sleep(0))


@pytest.fixture(autouse=True)
def no_leaks(loop_globals_ready: None) -> Iterator[None]:
    fds_before = _open_fds()
    children_before = _children()
    yield
    leaked_children = _children() - children_before
    assert not leaked_children, f"test left child processes running: {sorted(leaked_children)}"
    # The fd listing itself opens one fd; compare what remains open after it.
    leaked_fds = {fd for fd in _open_fds() - fds_before if os.path.exists(f"/proc/self/fd/{fd}")}
    details = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked_fds}
    assert not leaked_fds, f"test leaked file descriptors: {details}"
