"""What ``scale.py`` reads from ``/proc`` (and ``perf``): a daemon's descendants,
their PSS, and the CPU time, context switches and syscalls of a set of processes.

Every reader tolerates a process that is gone by the time it is read (a
driver restarting, a spare replaced): it counts what it could read.
Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

GONE = (FileNotFoundError, ProcessLookupError, PermissionError)
PERF_STOP_S = 10.0


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (of every one of its threads)."""
    found: list[int] = []
    with contextlib.suppress(*GONE):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(*GONE), open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(child) for child in file.read().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found, todo = [], children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children(child)
    return found


def pss_kib(pid: int) -> int:
    """The proportional set size of ``pid`` in KiB (0 if it is gone)."""
    with contextlib.suppress(*GONE), open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def inotify_watches(pid: int) -> int:
    """How many inotify watches ``pid`` holds (0 if it is gone)."""
    count = 0
    with contextlib.suppress(*GONE):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(*GONE):
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    count += sum(line.startswith("inotify wd:") for line in info)
    return count


@dataclass(frozen=True)
class Usage:
    """Counters of a set of processes, summed over their threads."""

    cpu_ns: int = 0  # time on a CPU (schedstat)
    voluntary: int = 0  # context switches: the thread slept (each is a later wake-up)
    involuntary: int = 0  # context switches: the thread was preempted
    rw_syscalls: int = 0  # read-like and write-like syscalls (/proc/PID/io syscr + syscw)
    system_ticks: int = 0  # of the CPU time (/proc/PID/stat): in the Linux kernel
    user_ticks: int = 0  # and in the process itself
    processes: int = 0

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu_ns - other.cpu_ns,
            self.voluntary - other.voluntary,
            self.involuntary - other.involuntary,
            self.rw_syscalls - other.rw_syscalls,
            self.system_ticks - other.system_ticks,
            self.user_ticks - other.user_ticks,
            self.processes,
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu_ns + other.cpu_ns,
            self.voluntary + other.voluntary,
            self.involuntary + other.involuntary,
            self.rw_syscalls + other.rw_syscalls,
            self.system_ticks + other.system_ticks,
            self.user_ticks + other.user_ticks,
            self.processes + other.processes,
        )


def _one(pid: int) -> Usage:
    cpu = voluntary = involuntary = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{task}"
        with contextlib.suppress(*GONE):
            with open(f"{base}/schedstat") as schedstat:
                cpu += int(schedstat.read().split()[0])
            with open(f"{base}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
    syscalls = 0
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith(("syscr:", "syscw:")):
                syscalls += int(line.split()[1])
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return Usage(cpu, voluntary, involuntary, syscalls, int(fields[12]), int(fields[11]), 1)


def usage(pids: Iterable[int]) -> Usage:
    """The counters of ``pids`` summed (a process gone is left out).

    CPU time is summed over the threads alive now: a thread that ended in
    between takes its time with it, so windows compare processes whose
    threads live on (an event loop's, a thread pool's)."""
    total = Usage()
    for pid in pids:
        with contextlib.suppress(*GONE):
            total += _one(pid)
    return total


def perf_path() -> str | None:
    return shutil.which("perf")


ALL_SYSCALLS = "raw_syscalls:sys_enter"
# The syscalls an event loop's I/O makes, counted by name (a tracepoint each; all
# of them, syscalls:sys_enter_*, take perf seconds per thread to set up).
NAMED = [
    *("epoll_wait", "epoll_pwait", "epoll_ctl", "read", "recvfrom", "recvmsg", "write"),
    *("writev", "sendto", "sendmsg", "futex", "getpid", "ioctl"),
]
EACH_SYSCALL = ",".join([*(f"syscalls:sys_enter_{name}" for name in NAMED), ALL_SYSCALLS])


@contextlib.asynccontextmanager
async def syscall_counter(
    pids: list[int], events: str = ALL_SYSCALLS
) -> AsyncIterator[dict[str, int]]:
    """Count the syscalls ``pids`` make with ``perf stat`` (``events``:
    ALL_SYSCALLS gives ``{"syscalls": n}``, EACH_SYSCALL the count of each
    of NAMED and of the ``other`` syscalls), from perf's start in this block (it attaches
    within milliseconds) to its SIGINT at the end; the dict is filled after
    the block. perf is always stopped and reaped. RuntimeError if perf cannot
    count."""
    perf = perf_path()
    if perf is None:
        raise RuntimeError("perf not found")
    result: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="drivebay-scale-perf-") as tmp:
        out = Path(tmp) / "perf.csv"
        argv = [perf, "stat", "-x", ",", "-o", str(out), "-e", events]
        argv += ["-p", ",".join(map(str, pids))]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            yield result
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), PERF_STOP_S)
            except BaseException as exc:
                if process.returncode is None:
                    process.kill()
                await asyncio.shield(process.wait())
                if isinstance(exc, TimeoutError):
                    raise RuntimeError(f"perf did not stop within {PERF_STOP_S:g} s") from exc
                raise
        result.update(_perf_counts(out.read_text(), events))
    if not result:
        raise RuntimeError(f"perf printed no count of {events}")


def _perf_counts(text: str, events: str) -> dict[str, int]:
    counts = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[2].startswith(("raw_syscalls:", "syscalls:")):
            continue
        if not fields[0].strip().isdigit():
            raise RuntimeError(f"perf could not count syscalls: {line}")
        if fields[2] == ALL_SYSCALLS:
            counts["syscalls"] = int(fields[0])
        else:
            counts[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
    if events != ALL_SYSCALLS and "syscalls" in counts:
        counts["other"] = counts.pop("syscalls") - sum(counts.values())
    return counts
