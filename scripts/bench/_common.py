"""Shared helpers for the scripts in ``scripts/bench``.

Measuring (latency samples, call rates over a time budget, count-based runs
calibrated by a warm-up), summarising (percentiles), helper processes that
are always reaped, and reporting (a plain-text table, the machine, one JSON
object on the last line of stdout). Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# -- measuring -------------------------------------------------------------------


def sample_latency(call: Callable[[], Any], seconds: float) -> list[int]:
    """Run ``call`` back to back for ``seconds``; each call's duration in ns."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    end = clock() + int(seconds * 1e9)
    while True:
        start = clock()
        call()
        stop = clock()
        append(stop - start)
        if stop >= end:
            return samples


async def sample_latency_async(call: Callable[[], Awaitable[Any]], seconds: float) -> list[int]:
    """``sample_latency`` for a call that must be awaited."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    end = clock() + int(seconds * 1e9)
    while True:
        start = clock()
        await call()
        stop = clock()
        append(stop - start)
        if stop >= end:
            return samples


def call_rate(call: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``call`` run back to back for ``seconds``."""
    clock = time.perf_counter
    count = 0
    start = clock()
    end = start + seconds
    while True:
        call()
        count += 1
        now = clock()
        if now >= end:
            return count / (now - start)


async def concurrent_rate(
    call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float
) -> float:
    """Calls per second with ``concurrency`` callers each looping on ``call``.

    Callers stop starting calls after ``seconds``; the calls still in flight
    then are waited for and counted, so the figure covers every call made.
    """
    clock = time.perf_counter
    end = clock() + seconds
    count = 0

    async def caller() -> None:
        nonlocal count
        while clock() < end:
            await call()
            count += 1

    start = clock()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(caller())
    return count / (clock() - start)


def calibrated_rate(run: Callable[[int], float], seconds: float, warmup: float) -> float:
    """Items per second of ``run(count) -> elapsed seconds``, for runs that
    must know their size up front (no deadline inside).

    Warms up with growing counts for ``warmup`` seconds, then makes one run
    sized from the warm-up rate to last about ``seconds``.
    """
    count, spent, elapsed = 16, 0.0, 0.0
    while spent < warmup:
        elapsed = run(count)
        spent += elapsed
        if elapsed < warmup / 4:
            count *= 2
    size = max(count, int(count / max(elapsed, 1e-9) * seconds))
    return size / run(size)


# -- summarising -----------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, linearly interpolated."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_us(samples_ns: Sequence[int]) -> tuple[float, float]:
    """(median, p99) of samples in ns, in µs."""
    ordered = sorted(samples_ns)
    return percentile(ordered, 50) / 1e3, percentile(ordered, 99) / 1e3


# -- helper processes --------------------------------------------------------------


@contextlib.contextmanager
def child_process(
    argv: Sequence[str],
    pass_fds: Sequence[int] = (),
    ready_timeout: float = 30.0,
    cpu: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a helper process, wait until it is ready, and always reap it.

    The child gets one more argument: the fd of its end of a control socket.
    It must call ``signal_ready(fd)`` once it serves, and may treat EOF on
    that fd as "the parent is gone". It runs in its own process group, so a
    Ctrl-C reaches only the parent, whose exit from this block ends the child
    (SIGTERM, then SIGKILL) and reaps it. Raises RuntimeError when the child
    exits or stays silent instead of getting ready. ``cpu``: the child runs
    on that CPU only (see ``spawning_on``).
    """
    ours, theirs = socket.socketpair()
    with ours:
        try:
            with spawning_on(cpu):
                child = subprocess.Popen(
                    [*argv, str(theirs.fileno())],
                    pass_fds=(*pass_fds, theirs.fileno()),
                    process_group=0,
                )
        finally:
            theirs.close()
        try:
            ours.settimeout(ready_timeout)
            try:
                ready = ours.recv(1)
            except TimeoutError:
                ready = b""
            if not ready:
                raise RuntimeError(f"helper {argv[1:]} did not get ready")
            yield child
        finally:
            _end(child)


def _end(child: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
    child.wait()


async def stop_process(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, SIGKILL past ``grace`` seconds; the process is always reaped,
    also when we are cancelled (then it is killed at once)."""
    if process.returncode is None:
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()
    except asyncio.CancelledError:
        process.kill()
        await asyncio.shield(process.wait())
        raise


def signal_ready(control_fd: int) -> None:
    """In a helper started by ``child_process``: tell the parent we serve."""
    os.write(control_fd, b"R")


# -- machine ---------------------------------------------------------------------


def pin_to_one_cpu() -> int:
    """Pin this process to one CPU (children started later inherit it)."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def split_cpus() -> tuple[int, int]:
    """Pin this process to one CPU and return it with another one, for the
    helpers (``spawning_on``): caller and callee then always run on different
    CPUs, and every wake-up crosses between them."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("placing helpers on another CPU needs two CPUs; this process has one")
    os.sched_setaffinity(0, {allowed[0]})
    return allowed[0], allowed[1]


@contextlib.contextmanager
def spawning_on(cpu: int | None) -> Iterator[None]:
    """Processes started in this block run on ``cpu`` only (None: where they
    like). A child inherits its parent's affinity, threads included, so this
    process moves there for the block and moves back after it."""
    if cpu is None:
        yield
        return
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, home)


def machine() -> dict[str, Any]:
    """What a reader needs to compare figures across runs."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# -- reporting -------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = (str(cell) for cell in cells)
        parts = [first.ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def number(value: float | None, digits: int = 3) -> str:
    """A figure with ``digits`` significant digits and thousands separators."""
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return f"{value:,.{decimals}f}"


def print_json_last(result: dict[str, Any]) -> None:
    """Print ``result`` as one JSON line; call it last so tools can read the
    last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True), flush=True)


def progress(message: str) -> None:
    """A progress note on stderr (stdout carries only the results)."""
    print(message, file=sys.stderr, flush=True)


def default_envs_dir() -> Path:
    """Where benchmarks keep drivebay's virtualenvs between runs."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "drivebay-bench" / "envs"


def bench_parser(description: str, quick_help: str, envs: bool = True) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --json (and --envs-dir)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    if envs:
        parser.add_argument(
            "--envs-dir",
            type=Path,
            default=default_envs_dir(),
            help="drivebay's virtualenv store, kept between runs (default: %(default)s)",
        )
    return parser
