"""The drivers-dir watch (``kernel/drivers/watch.py``) over a real directory
and real inotify, with an in-memory registry that records what it is told."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from drivebay.kernel.drivers.watch import WATCH_CHECK_S, watch_drivers
from tests.e2e.harness import wait_for
from tests.helpers import run


class RecordingRegistry:
    """The three things the watch asks of a registry, recorded."""

    def __init__(self) -> None:
        self.looks_at_all = 0
        self.touched_paths: list[str] = []
        self.changed = asyncio.Event()

    def touch_all(self) -> None:
        self.looks_at_all += 1
        self.changed.set()

    def touched(self, paths: Iterable[str]) -> None:
        self.touched_paths.extend(paths)
        self.changed.set()

    def watch_dirs(self) -> frozenset[Path]:
        return frozenset()


def test_every_entry_is_looked_at_again_once_the_watch_is_armed(tmp_path: Path) -> None:
    """A bundle moved in after the first look and before inotify is armed
    is not missed: once armed, the watch has the registry look at all again."""

    async def main() -> None:
        registry = RecordingRegistry()
        stop = asyncio.Event()
        watching = asyncio.ensure_future(
            watch_drivers(tmp_path, cast(Any, registry), lambda: None, stop)
        )
        try:
            async with asyncio.timeout(WATCH_CHECK_S * 5):
                while registry.looks_at_all < 2:
                    registry.changed.clear()
                    await registry.changed.wait()
            (tmp_path / "bundle.zip").write_bytes(b"x")  # and the armed watch sees changes
            async with asyncio.timeout(WATCH_CHECK_S * 5):
                while not any(p.endswith("bundle.zip") for p in registry.touched_paths):
                    registry.changed.clear()
                    await registry.changed.wait()
        finally:
            stop.set()
            await asyncio.wait_for(watching, WATCH_CHECK_S * 3)

    before = set(os.listdir("/proc/self/fd"))
    run(main())
    # The watcher's own thread (notify's epoll and eventfd) ends just after
    # the watch is closed: wait for its descriptors to go, with a deadline.
    wait_for(lambda: not set(os.listdir("/proc/self/fd")) - before, 10, "the watcher's fds closed")
