"""Watching the drivers dir: each change marks its entry in the registry and
wakes the reconciler.

The watch (watchfiles, inotify) is not recursive: it covers the drivers dir
and the folders the registry's walks met (``Registry.watch_dirs``). A
recursive watch would walk, following links, whatever a link in the drivers
dir points to (``ln -s / drivers/oops`` means the whole file system). The
watch runs in a worker thread: starting it (one inotify watch per folder)
and waiting for changes block, and neither may happen on the event loop.

Each watch, once armed (its first batch, at the latest after WATCH_CHECK_S),
has the registry look at every entry again: a bundle moved in between the
look before the watch and its arming is not missed. The watch starts over,
and the registry looks at every entry again, when the set of folders
changed, or when the drivers dir was removed and made again
(``rm -rf drivers; mkdir drivers``): both are seen within WATCH_CHECK_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Generator
from pathlib import Path

import watchfiles

from drivebay.kernel.drivers.registry import Registry
from drivebay.sandbox.cancel_safe import wait_until_done

log = logging.getLogger("drivebay.kernel")

WATCH_CHECK_S = 2.0  # how often the watch checks that what it watches is still the same

Changes = set[tuple[watchfiles.Change, str]]


class _Stopping:
    """What the watch thread polls: the kernel stopping, or this watch ending."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self.ended = threading.Event()

    def is_set(self) -> bool:
        return self._stop.is_set() or self.ended.is_set()


async def watch_drivers(
    path: Path, registry: Registry, kick: Callable[[], None], stop: asyncio.Event
) -> None:
    """Tell ``registry`` and ``kick`` of every change under ``path`` until ``stop``."""
    kick()
    while not stop.is_set():
        watched = _inode(path)
        if watched is None:  # gone: look again soon, as for a bundle being copied
            await _pause(stop)
            continue
        folders = registry.watch_dirs()
        registry.touch_all()
        kick()
        try:
            await _watch_once(path, watched, folders, registry, kick, stop)
        except FileNotFoundError:  # a folder went before its watch began: soon rescanned
            await _pause(stop)


async def _watch_once(
    path: Path,
    watched: int,
    folders: frozenset[Path],
    registry: Registry,
    kick: Callable[[], None],
    stop: asyncio.Event,
) -> None:
    stopping = _Stopping(stop)
    changes = watchfiles.watch(
        path,
        *sorted(folders),
        stop_event=stopping,
        debounce=200,
        step=50,
        recursive=False,
        ignore_permission_denied=True,
        rust_timeout=int(WATCH_CHECK_S * 1000),
        yield_on_timeout=True,
    )
    root = _absolute(path)  # as the deletion event names it
    armed = False
    try:
        while (batch := await _next(changes, stopping)) is not None:
            if not armed:
                # The watch is armed by now (its first batch came from it):
                # what arrived between the look before it and its arming is
                # seen by looking at every entry once more.
                armed = True
                registry.touch_all()
                kick()
            if batch:
                registry.touched(changed for _, changed in batch)
                kick()
            # The watch dies with its directory; a new one may even get the
            # same inode number, so the deletion event counts.
            if _inode(path) != watched or (watchfiles.Change.deleted, root) in batch:
                log.info("drivers dir %s was removed or replaced; watching it anew", path)
                return
            if registry.watch_dirs() != folders:
                return
    finally:
        stopping.ended.set()
        changes.close()  # never running here: _next waited for its thread


async def _next(changes: Generator[Changes, None, None], stopping: _Stopping) -> Changes | None:
    """The next batch of changes (empty after WATCH_CHECK_S without any),
    read in a worker thread; None once the watch stopped."""
    pending = asyncio.ensure_future(asyncio.to_thread(next, changes, None))
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        stopping.ended.set()
        await wait_until_done(pending)  # the thread sees it within one step (50 ms)
        raise


async def _pause(stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), WATCH_CHECK_S)


def _absolute(path: Path) -> str:
    return os.path.abspath(path)  # no system call for an absolute path: the kernel's is


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
