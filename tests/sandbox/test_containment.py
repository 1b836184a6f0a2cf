"""No descendant of a driver outlives it: a PID namespace per driver, and the
process-group fallback, against real processes that daemonise (``setsid``,
double fork) and hold the driver's stdout and stderr."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivebay.kernel.config import TimeoutSettings, load_config
from drivebay.kernel.drivers.process import DriverProcess
from drivebay.protocol.errors import ConfigError, DriverCrashed
from drivebay.protocol.init_shim import contain
from drivebay.sandbox.containment import start_line, summarize
from drivebay.sandbox.runtime_dir import ensure_runtime_dir
from tests.helpers import (
    FAST,
    SPAWN_MODES,
    children_of,
    eventually,
    fixture_spec,
    run,
    started,
)

ROOT = Path(__file__).parents[2]
# The kill stage waits long: a wait on the pipes' end-of-file would show.
PATIENT = TimeoutSettings(
    start_s=20, ping_interval_s=0.2, ping_timeout_s=5, call_s=20, drain_s=2, term_s=2, kill_s=600
)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's children lists)."""
    found, level = [], [pid]
    while level:
        children = [child for parent in level for child in children_of(parent)]
        found += children
        level = children
    return found


def marked(marker: str, prefix: bool = False) -> list[int]:
    """Pids of the processes with ``marker`` as an argument (or as the start
    of one)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    argv = handle.read().split(b"\0")
            except OSError:
                continue
            wanted = marker.encode()
            if any(arg == wanted or (prefix and arg.startswith(wanted)) for arg in argv):
                found.append(int(entry))
    return found


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique argv marker; whatever still carries it (or a marker made from
    it) at the end is killed."""
    value = f"drivebay-escapee-{uuid.uuid4().hex}"
    yield value
    for pid in marked(value, prefix=True):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def escapees_running(proc: DriverProcess, marker: str, count: int) -> None:
    await proc.attach("a", {})
    await proc.call("a", "escapees", {"marker": marker, "setsid": count > 1})
    await eventually(lambda: len(marked(marker)) == count)


def test_this_machine_offers_pid_namespaces():
    """The tests below run the namespace path for real (root, or a user namespace)."""
    probe = subprocess.run(
        [sys.executable, "-I", "-c", "from drivebay.protocol.init_shim import probe; probe()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert probe.stdout.strip() in ("PID namespace", "user and PID namespace")
    assert contain("process_group") == ""


@SPAWN_MODES
def test_descendants_die_with_a_killed_driver(tmp_path, marker, spawn):
    async def main():
        spec = fixture_spec(tmp_path, containment="pid_namespace", spawn=spawn)
        async with started(spec, PATIENT) as proc:
            assert proc.hello is not None and proc.hello.pid == 2
            await escapees_running(proc, marker, 2)
            assert proc.pid is not None and proc.pid != proc.group
            os.kill(proc.pid, signal.SIGKILL)
            async with asyncio.timeout(60):
                assert await proc.wait() == -signal.SIGKILL
            await eventually(lambda: not marked(marker))

    run(main())


@SPAWN_MODES
def test_descendants_die_with_a_stopped_driver(tmp_path, marker, spawn):
    async def main():
        spec = fixture_spec(tmp_path, containment="pid_namespace", spawn=spawn)
        async with started(spec, FAST) as proc:
            await escapees_running(proc, marker, 2)
            assert await proc.stop() == 0
            await eventually(lambda: not marked(marker))

    run(main())


DAEMON = """
import asyncio, os, sys
from pathlib import Path
from tests.helpers import FAST, fixture_spec, started

async def main():
    spec = fixture_spec(Path(sys.argv[1]), containment="pid_namespace", spawn=sys.argv[2])
    async with started(spec, FAST) as proc:
        await proc.attach("a", {})
        await proc.call("a", "escapees", {"marker": os.environ["MARKER"]})
        print(proc.pid, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@SPAWN_MODES
def test_descendants_die_with_a_killed_daemon(tmp_path, marker, spawn):
    """kill -9 of the daemon ends its drivers, what they started, and (forked)
    the template."""
    daemon = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DAEMON), str(tmp_path), spawn],
        cwd=ROOT,
        env={**os.environ, "MARKER": marker},  # not in its argv: it is no escapee
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        driver = int(daemon.stdout.readline())
        run(eventually(lambda: len(marked(marker)) == 2))
        below = descendants(daemon.pid)
    finally:
        daemon.kill()
        daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()
    run(eventually(lambda: not marked(marker) and not os.path.exists(f"/proc/{driver}")))
    assert driver in below
    run(eventually(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in below)))


def test_process_group_fallback_ends_the_group_and_never_waits_for_escapees(tmp_path, marker):
    """Without a namespace a ``setsid`` descendant escapes the group kill (the
    documented limit of the fallback); holding the driver's stdout and stderr,
    it must not hold up the crash: the driver's exit is reported while it
    still runs."""
    member = f"{marker}-member"

    async def main():
        spec = fixture_spec(tmp_path, containment="process_group")
        async with started(spec, PATIENT) as proc:
            assert proc.hello is not None and proc.hello.pid == proc.pid == proc.group
            await escapees_running(proc, marker, 2)
            await proc.call("a", "escapees", {"marker": member, "setsid": False})
            await eventually(lambda: len(marked(member)) == 1)
            await proc.call("a", "say", {"text": "last words"})
            with pytest.raises(DriverCrashed, match="signal 9"):
                await _kill(proc)
            async with asyncio.timeout(60):  # the kill stage is 600 s: EOF would time out
                await proc.wait()
            assert len(marked(marker)) == 2  # escaped, and still holding the pipes
            assert "last words" in proc.stderr_tail()
            await eventually(lambda: not marked(member))  # the group was killed

    run(main())


async def _kill(proc: DriverProcess) -> None:
    """SIGKILL the driver with a call in flight; the call fails with its death."""
    call = asyncio.ensure_future(proc.call("a", "sleep", {"seconds": 600}))
    await asyncio.sleep(0)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    await call


@pytest.mark.parametrize(
    ("mode", "found", "level", "line"),
    [
        (
            "auto",
            {"root": "PID namespace", "nobody": "user and PID namespace"},
            logging.INFO,
            "containment: each driver in a PID namespace of its own "
            "(as root: PID namespace, as nobody: user and PID namespace)",
        ),
        (
            "auto",
            {"alice": "none: Operation not permitted"},
            logging.WARNING,
            "containment: no PID namespace for drivers (as alice: Operation not permitted), "
            "so drivers' their descendants are ended with their process group only",
        ),
        (
            "pid_namespace",
            {"alice": "none: Operation not permitted"},
            logging.ERROR,
            "containment: pid_namespace is required but the kernel refuses it "
            "(as alice: Operation not permitted): those drivers will not start",
        ),
        (
            "process_group",
            {},
            logging.WARNING,
            "containment: process_group (from the config): drivers' their descendants",
        ),
    ],
)
def test_the_start_line_says_which_mechanism_runs(mode, found, level, line):
    got_level, got_line = summarize(mode, found)
    assert (got_level, got_line[: len(line)]) == (level, line)


def test_the_start_probe_finds_what_the_drivers_get(tmp_path):
    users = {"nobody"} if os.geteuid() == 0 else set()
    level, line = run(start_line("auto", ensure_runtime_dir(tmp_path / "state"), users))
    assert level == logging.INFO, line
    if users:
        assert "as root: PID namespace, as nobody: user and PID namespace" in line


def test_an_unknown_containment_is_refused():
    with pytest.raises(ConfigError, match="containment"):
        load_config(None, {"containment": "cgroups"})
