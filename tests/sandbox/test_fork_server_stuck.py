"""A template that takes no request or answers none (stopped, stuck):
starts of its interpreter fail within their bound, the template is replaced,
and nothing it made is left unreaped."""

from __future__ import annotations

import os
import signal

import pytest

from drivebay.sandbox import fork_server
from drivebay.sandbox.spawn import spawn_child
from tests.helpers import fixture_spec, run


def our_children() -> set[int]:
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as listing:
            found.update(int(pid) for pid in listing.read().split())
    return found


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
