"""Starting a child: nothing is left behind when a step fails, and no
descriptor is closed behind the back of the transport that owns it."""

from __future__ import annotations

import asyncio
import errno
import os
import signal

import pytest

from drivebay.sandbox.spawn import spawn_child
from tests.helpers import assert_numbers_reusable, fixture_spec, run


def test_a_spawn_that_runs_out_of_descriptors_leaves_no_transport_behind(tmp_path, monkeypatch):
    """With the descriptor limit reached after the child started (other tasks
    open descriptors while the pipes are being connected), the start fails
    cleanly: the child is reaped and each pipe closed by its transport. A
    pipe closed behind its transport's back freed its number for the next
    descriptor, and registering that one failed with ``File descriptor N is
    used by transport``."""

    def no_more_descriptors(pid: int) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    async def main():
        loop = asyncio.get_running_loop()
        with monkeypatch.context() as patch:
            patch.setattr(os, "pidfd_open", no_more_descriptors)
            with pytest.raises(OSError, match="Too many open files"):
                await spawn_child(fixture_spec(tmp_path))
        assert_numbers_reusable(loop)

    run(main())


def test_a_spawn_cancelled_while_its_pipes_are_connected_stays_cancelled(tmp_path):
    """Cancelled inside ``connect_read_pipe`` (a slot stopped while its spare
    starts), the start is cancelled: the loop's transport already owns the
    pipe and closes it, so closing it again failed with EBADF (or closed a
    reused number), and that OSError replaced the cancellation, which the
    spare's keeper then took for a failed launch and never ended."""

    async def stop(child):
        child.signal_group(signal.SIGKILL)
        await child.exited
        child.close()

    async def main():
        await stop(await spawn_child(fixture_spec(tmp_path)))  # what a first start keeps open
        await asyncio.sleep(0.05)
        before = set(os.listdir("/proc/self/fd"))
        for turns in range(4):  # cancelled at each await the start makes
            starting = asyncio.ensure_future(spawn_child(fixture_spec(tmp_path)))
            for _ in range(turns + 1):
                await asyncio.sleep(0)
            starting.cancel()
            try:
                child = await starting
            except asyncio.CancelledError:
                pass  # what a cancelled start must raise
            else:  # finished before the cancel reached it: stop it ourselves
                await stop(child)
        await asyncio.sleep(0.05)  # transports close on the next loop passes
        assert set(os.listdir("/proc/self/fd")) <= before

    run(main())
