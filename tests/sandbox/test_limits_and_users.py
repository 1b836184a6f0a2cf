"""Limits and privilege drop, against real child processes."""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import msgspec
import pytest

from drivebay.kernel.drivers.process import limit_verdict
from drivebay.protocol.errors import DriverCrashed, DriverStartError, OperationFailed
from drivebay.sandbox.fork_server import Templates
from drivebay.sandbox.privileges import RunAs, preflight
from drivebay.sandbox.runtime_dir import ensure_runtime_dir
from drivebay.sandbox.spawn import SpawnSpec
from tests.helpers import FAST, FIXTURES, SPAWN_MODES, fixture_spec, run, started

IS_ROOT = os.geteuid() == 0


def test_memory_limit_gives_a_clear_verdict_and_the_driver_lives(tmp_path):
    async def main():
        spec = fixture_spec(tmp_path, rlimits={"as": 400 * 1024 * 1024})
        async with started(spec) as proc:
            await proc.attach("a", {})
            with pytest.raises(OperationFailed) as caught:
                await proc.call("a", "hog", {"megabytes": 1024})
            assert str(caught.value) == "MemoryError: exceeded memory limit 400 MiB"
            assert await proc.call("a", "hog", {"megabytes": 10}) == 10 * 1024 * 1024
            assert proc.alive

    run(main())


@SPAWN_MODES
def test_open_files_limit_applies(tmp_path, spawn):
    async def main():
        spec = fixture_spec(tmp_path, rlimits={"nofile": 64}, spawn=spawn)
        async with started(spec) as proc:
            await proc.attach("a", {})
            with pytest.raises(OperationFailed, match="Too many open files"):
                await proc.call("a", "open_many", {"count": 200})
            assert await proc.call("a", "open_many", {"count": 10}) == 10

    run(main())


@pytest.fixture
def public_dir():
    """A directory any user can traverse (pytest's tmp dirs are private)."""
    path = Path(tempfile.mkdtemp(prefix="drivebay-public-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def public_spec(root: Path, python: Path, run_as: RunAs) -> SpawnSpec:
    src = root / "src"
    shutil.copytree(FIXTURES / "misbehave" / "src", src)
    work = root / "work"
    work.mkdir()
    os.chown(work, run_as.uid, run_as.gid)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return SpawnSpec(
        python=python,
        runtime_dir=ensure_runtime_dir(root / "state"),
        entrypoint="misbehave:Misbehave",
        driver="misbehave",
        version="1.0.0",
        cwd=work,
        src=src,
        run_as=run_as,
    )


@SPAWN_MODES
def test_root_daemon_runs_driver_as_nobody(public_dir, spawn):
    if not IS_ROOT:  # an ordinary user's daemon must refuse, with the reason
        with pytest.raises(DriverStartError, match="drivebayd is not root"):
            RunAs.lookup("nobody")
        return
    system_python = Path("/usr/bin/python3")
    assert system_python.exists(), "Debian's python3 is part of the machine"
    nobody = RunAs.lookup("nobody")
    spec = public_spec(public_dir, system_python, nobody)
    if spawn == "fork-server":
        spec = dataclasses.replace(spec, templates=Templates())
    preflight(nobody, system_python, [spec.runtime_dir, spec.src or public_dir, spec.cwd])

    async def main():
        async with started(spec, FAST) as proc:
            await proc.attach("a", {})
            who = await proc.call("a", "whoami", {})
            assert who["uid"] == nobody.uid and who["gid"] == nobody.gid
            assert 0 not in who["groups"]

    run(main())


def test_preflight_names_the_unreachable_interpreter(tmp_path):
    if IS_ROOT:
        who = RunAs.lookup("nobody")
        private = tmp_path / "private"
        private.mkdir(mode=0o700)
        python = private / "python3"
        shutil.copy("/bin/true", python)
        with pytest.raises(DriverStartError) as caught:
            preflight(who, python, [])
        assert str(caught.value) == (
            f"cannot run the driver as nobody: {_first_blocked(python)} "
            f"is not searchable by nobody; choose another `user:`, or set `python:` to an "
            f"interpreter nobody can run (such as /usr/bin/python3)"
        )
    else:
        other = next(p.pw_name for p in pwd.getpwall() if p.pw_uid not in (0, os.geteuid()))
        with pytest.raises(DriverStartError, match="drivebayd is not root"):
            RunAs.lookup(other)


def _first_blocked(path: Path) -> Path:
    for parent in reversed(path.parents):
        info = parent.stat()
        if not (info.st_mode & 0o001):
            return parent
    raise AssertionError("no blocked parent")


def test_unknown_user_is_one_line():
    with pytest.raises(
        DriverStartError, match=r"^user 'no-such-user-x' does not exist; fix `user:`"
    ):
        RunAs.lookup("no-such-user-x")


@SPAWN_MODES
def test_a_driver_killed_by_its_memory_limit_gets_the_verdict(tmp_path, spawn):
    async def main():
        spec = fixture_spec(tmp_path, rlimits={"as": 400 * 1024 * 1024}, spawn=spawn)
        async with started(spec) as proc:
            await proc.attach("a", {})
            with pytest.raises(DriverCrashed) as caught:
                await proc.call("a", "hog_and_abort", {})
            message = str(caught.value)
            assert "exited (signal 6 (SIGABRT)); exceeded memory limit 400 MiB" in message
            assert "MemoryError" in message  # the stderr tail says what happened

    run(main())


@SPAWN_MODES
def test_a_driver_past_its_cpu_limit_is_told_so(tmp_path, spawn):
    """SIGXCPU at the soft limit, not SIGKILL: the verdict names the limit
    (forked, the driver's PID 1 passes its status on)."""
    patient = msgspec.structs.replace(FAST, ping_timeout_s=60, call_s=100)

    async def main():
        spec = fixture_spec(tmp_path, rlimits={"cpu": 1}, spawn=spawn)
        async with started(spec, patient) as proc:
            await proc.attach("a", {})
            with pytest.raises(DriverCrashed) as caught:
                await proc.call("a", "spin", {})
            assert "exited (signal 24 (SIGXCPU)); exceeded CPU limit 1 s" in str(caught.value)

    run(main())


@pytest.mark.parametrize(
    ("rlimits", "returncode", "cpu_s", "tail", "verdict"),
    [
        ({"cpu": 3}, -signal.SIGXCPU, 3.0, "", "exceeded CPU limit 3 s"),
        ({"cpu": 3}, -signal.SIGKILL, 5.1, "", "exceeded CPU limit 3 s"),  # ignored SIGXCPU
        ({"cpu": 3}, -signal.SIGKILL, 0.2, "", ""),  # killed by someone else
        ({}, -signal.SIGXCPU, 3.0, "", ""),
        ({"as": 512 << 20}, -signal.SIGABRT, 0.1, "MemoryError", "exceeded memory limit 512 MiB"),
        ({"as": 512 << 20}, 1, 0.1, "ValueError", ""),
    ],
)
def test_limit_verdicts(rlimits, returncode, cpu_s, tail, verdict):
    assert limit_verdict(rlimits, returncode, cpu_s, tail) == verdict


def test_a_limit_above_what_the_driver_may_set_is_one_line(tmp_path):
    """Above the hard limit it inherits (and, for root, above the kernel's
    nr_open) the driver cannot take the limit: it says so, no traceback."""

    async def main():
        spec = fixture_spec(tmp_path, rlimits={"nofile": 1 << 40})
        with pytest.raises(DriverStartError) as caught:
            async with started(spec):
                pass
        said = str(caught.value)
        assert f"cannot set RLIMIT_NOFILE to {1 << 40}" in said, said
        assert "raise drivebayd's (LimitNOFILE= for open_files)" in said, said
        assert "Traceback" not in said

    run(main())
