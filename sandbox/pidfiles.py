"""Records of running driver processes, so a new daemon can end stale ones.

Children die with the daemon through the parent-death signal; this is the
second line of defence (for example a child that was between fork and
``prctl`` when the daemon was killed). Each record holds the pid, the
process start time from ``/proc/<pid>/stat`` and the process group the kernel
signals (the driver's own pid, or the process that keeps its PID namespace):
a record is acted on only if pid and start time still match, so an unrelated
process that reused the pid is never hurt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("drivebay.pidfiles")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


class PidRecords:
    """One file per running driver version under ``<state>/run``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def record(self, name: str, pid: int) -> None:
        started = start_time(pid)
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return
        if started is not None:
            (self.directory / f"{name}.pid").write_text(f"{pid} {started} {group}\n")

    def forget(self, name: str, pid: int | None = None) -> None:
        """Remove the record of ``name``; with ``pid``, only if it is still
        that process's (a same-version handover records its new process
        under the same name before the old one is reaped)."""
        path = self.directory / f"{name}.pid"
        if pid is not None:
            try:
                recorded = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return
            if recorded != pid:
                return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def end_stale(self) -> list[int]:
        """Kill the process group of every recorded process that is still the
        one recorded, or that is gone while members of its group live on
        (processes a driver started, which outlived it); remove all records.
        Returns the pids (group ids) killed.

        Linux never hands out a pid that is still some process group's id,
        so when the recorded process is gone, a group with its pid as id can
        only be the one it led."""
        killed: list[int] = []
        for path in sorted(self.directory.glob("*.pid")):
            try:
                pid, started, *rest = (int(field) for field in path.read_text().split())
                group = rest[0] if rest else pid  # records of older daemons: pid and time
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
                continue
            now = start_time(pid)
            if now == started:
                log.warning(
                    "killing stale driver %s (pid %d) left by a previous daemon", path.stem, pid
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
                killed.append(pid)
            elif now is None and _kill_group(group):
                log.warning(
                    "killed what stale driver %s (pid %d) left running in its process group",
                    path.stem,
                    pid,
                )
                killed.append(pid)
            path.unlink(missing_ok=True)
        return killed


def _kill_group(pgid: int) -> bool:
    """SIGKILL process group ``pgid``; False when it has no process left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
