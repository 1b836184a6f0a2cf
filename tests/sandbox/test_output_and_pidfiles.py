"""Driver log files (rotation, long lines, a disk that cannot take them)
and stale process records."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from drivebay.sandbox.output import RETRY_S, OutputCapture, RotatingFile
from drivebay.sandbox.pidfiles import PidRecords, start_time
from tests.helpers import eventually, run


def test_rotation_keeps_backups_and_no_line_cap(tmp_path):
    log = RotatingFile(tmp_path / "d.log", max_bytes=1000, backups=2)
    long_line = b"x" * 5000 + b"\n"
    log.write(long_line)  # one line longer than the file limit is kept whole
    log.write(b"second\n")
    log.write(b"third\n")
    log.close()
    assert (tmp_path / "d.log.1").read_bytes() == long_line
    assert (tmp_path / "d.log").read_bytes() == b"second\nthird\n"
    log = RotatingFile(tmp_path / "d.log", max_bytes=10, backups=2)
    log.write(b"0123456789ab\n")
    log.write(b"next\n")
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.log", "d.log.1", "d.log.2"]
    # Two rotations: the oldest (the long line) fell off the end.
    assert (tmp_path / "d.log.2").read_bytes() == b"second\nthird\n"
    assert (tmp_path / "d.log.1").read_bytes() == b"0123456789ab\n"
    assert (tmp_path / "d.log").read_bytes() == b"next\n"


# Echoes each line of its stdin on stdout, flushed; says how it ended.
ECHO = """
import sys
try:
    for line in sys.stdin:
        print(line, end="", flush=True)
except BrokenPipeError:
    sys.exit(3)
"""


def test_a_log_file_that_cannot_be_written_drops_output_and_keeps_the_pipe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk (writes to /dev/full fail with ENOSPC, for root too): the
    child's prints keep working, the bytes are counted and said once, and the
    file is written again, at the first chunk past the retry delay, once it can."""
    path = tmp_path / "d.log"
    path.symlink_to("/dev/full")
    now = [0.0]

    child = subprocess.Popen(
        [sys.executable, "-c", ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None

    async def main() -> int:
        log_file = RotatingFile(path, clock=lambda: now[0])
        capture = OutputCapture(log_file)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: capture, child.stdout
        )

        async def echo(line: str) -> None:
            child.stdin.write(f"{line}\n".encode())
            child.stdin.flush()
            await eventually(lambda: capture.tail(1) == [line])

        try:
            await echo("one")
            await echo("two")
            path.unlink()  # space is back, but the retry waits for its delay
            await echo("three")
            assert log_file.dropped == len("one\ntwo\nthree\n")
            now[0] += RETRY_S
            await echo("four")
            assert log_file.dropped == 0
            await echo("five")
        finally:
            child.stdin.close()
            code = await asyncio.to_thread(child.wait, 30)
            await capture.closed
            transport.close()
        return code

    with caplog.at_level(logging.WARNING, logger="drivebay.output"):
        code = run(main())
    assert code == 0  # the child never saw a broken pipe
    assert path.read_bytes() == b"four\nfive\n"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: cannot write this driver's output (No space left on device); dropping it "
        "until the file can be written again",
        f"{path}: writing again; 14 bytes of driver output were dropped (No space left on device)",
    ]


def test_a_log_file_whose_directory_went_away_is_made_again(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    now = [0.0]
    log_file = RotatingFile(logs / "d.log", max_bytes=10, clock=lambda: now[0])
    log_file.write(b"first\n")
    logs.rename(tmp_path / "aside")
    logs.write_text("")  # a file where the directory was: rotating fails
    log_file.write(b"rotates now\n")
    assert log_file.dropped == len(b"rotates now\n")
    logs.unlink()
    now[0] += RETRY_S
    log_file.write(b"back\n")
    log_file.close()
    assert (logs / "d.log").read_bytes() == b"back\n"
    assert (tmp_path / "aside" / "d.log").read_bytes() == b"first\n"


def test_an_outage_that_lasts_to_the_end_is_counted_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "logs").write_text("")  # the log dir cannot be made
    with caplog.at_level(logging.WARNING, logger="drivebay.output"):
        log_file = RotatingFile(tmp_path / "logs" / "d.log")  # no exception: dropping
        log_file.write(b"lost\n")
        log_file.close()
    assert [r.getMessage().split("; ")[0] for r in caplog.records] == [
        f"{tmp_path / 'logs' / 'd.log'}: cannot write this driver's output (File exists)",
        f"{tmp_path / 'logs' / 'd.log'}: 5 bytes of driver output were dropped (File exists)",
    ]


def test_stale_records_kill_only_the_recorded_process(tmp_path):
    records = PidRecords(tmp_path / "run")
    stale = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        records.record("drv@1", stale.pid)
        started = start_time(bystander.pid)
        assert started is not None
        # A record whose pid now belongs to another process (other start time).
        (tmp_path / "run" / "reused@1.pid").write_text(f"{bystander.pid} {started + 1}\n")
        (tmp_path / "run" / "garbage@1.pid").write_text("not a record\n")
        assert records.end_stale() == [stale.pid]
        assert stale.wait(timeout=30) == -signal.SIGKILL
        assert bystander.poll() is None
        assert list((tmp_path / "run").iterdir()) == []
    finally:
        for process in (stale, bystander):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_forget_with_a_pid_keeps_a_newer_record_under_the_same_name(tmp_path):
    records = PidRecords(tmp_path / "run")
    records.record("drv@1", os.getpid())  # the new process of a same-version handover
    records.forget("drv@1", os.getpid() + 1)  # the old one is reaped later
    assert (tmp_path / "run" / "drv@1.pid").exists()
    records.forget("drv@1", os.getpid())
    assert not (tmp_path / "run" / "drv@1.pid").exists()


# Run in a child of its own that is a subreaper, so that it can reap the
# orphan whose end it checks: a driver (the group leader) started a process,
# and died; the record's leader is gone, its group is not.
ORPHANED_GROUP = """
import ctypes, os, signal, subprocess, sys
from pathlib import Path
from drivebay.sandbox.pidfiles import PidRecords, start_time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
leader = subprocess.Popen(
    [sys.executable, "-c",
     "import subprocess, sys, time; "
     "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
     "print(p.pid, flush=True); time.sleep(600)"],
    start_new_session=True, stdout=subprocess.PIPE, text=True,
)
orphan = int(leader.stdout.readline())
records = PidRecords(Path(sys.argv[1]))
records.record("drv@1", leader.pid)
os.kill(leader.pid, signal.SIGKILL)
leader.wait()
leader.stdout.close()
assert start_time(orphan) is not None, "the orphan should still run"
killed = records.end_stale()
for _ in range(1000):  # up to 10 s; on failure end the orphan ourselves
    pid, status = os.waitpid(orphan, os.WNOHANG)
    if pid:
        break
    signal.sigtimedwait([signal.SIGCHLD], 0.01)
else:
    os.kill(orphan, signal.SIGKILL)
    os.waitpid(orphan, 0)
    status = 0
print(killed == [leader.pid], os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL)
"""


def test_stale_records_end_the_group_a_dead_driver_left_behind(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", ORPHANED_GROUP, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_a_stale_driver_in_its_namespace_is_ended_by_the_group_recorded(tmp_path):
    """In its PID namespace the driver is not its group's leader (the keeper
    is): the record holds the group, and the stale driver's group is killed."""
    records = PidRecords(tmp_path / "run")
    keeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "print(p.pid, flush=True); p.wait()",
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert keeper.stdout is not None
        driver = int(keeper.stdout.readline())
        records.record("drv@1", driver)
        assert (tmp_path / "run" / "drv@1.pid").read_text().split()[2] == str(keeper.pid)
        assert records.end_stale() == [driver]
        assert keeper.wait(timeout=30) == -signal.SIGKILL
    finally:
        if keeper.poll() is None:
            os.kill(keeper.pid, signal.SIGKILL)
        keeper.wait()
        if keeper.stdout is not None:
            keeper.stdout.close()


def test_a_log_file_is_opened_at_the_first_output(tmp_path):
    """A quiet driver, and every warm spare, holds no log descriptor."""
    before = len(os.listdir("/proc/self/fd"))
    log_file = RotatingFile(tmp_path / "logs" / "stdout.log")
    assert len(os.listdir("/proc/self/fd")) == before
    assert not (tmp_path / "logs" / "stdout.log").exists()
    log_file.write(b"hello\n")
    assert (tmp_path / "logs" / "stdout.log").read_bytes() == b"hello\n"
    assert len(os.listdir("/proc/self/fd")) == before + 1
    log_file.close()
    assert len(os.listdir("/proc/self/fd")) == before
