"""Driver log files (rotation, long lines) and stale process records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

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
