"""Driver log files (rotation, long lines) and stale process records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sandbox.output import RotatingFile
from sandbox.pidfiles import PidRecords, start_time


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
from sandbox.pidfiles import PidRecords, start_time
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
