"""Scale benchmark: a hundred drivers on one host.

Run with the project venv, from the repository root, after compiling the
project's bytecode (``scripts/test`` does the same)::

    .venv/bin/python -m compileall -q kernel sandbox protocol
    .venv/bin/python scripts/bench/scale.py [--quick] [--json] [--no-floor]
    .venv/bin/python scripts/bench/scale.py --only calls [--daemon LABEL:VENV:JSON] [--floor-batch]

100 trivial drivers (20 with ``--quick``): bundles ``d-000`` ... of the
ledger driver of ``upgrade.py`` (category ``other``, one start wave), all
sharing one env, kept between runs in ``--envs-dir`` (a first daemon with one
of them builds it before anything is timed). Daemons with default settings
but for their paths and ``settle_s: 0.2`` (bundles are renamed into place
at once), each started with an empty drivers dir; this process is on uvloop.

1. drivebayd, spares on (the default):
   (a) start: the bundles are renamed into the drivers dir (the drop); a
       client connected before sends ``status`` in a loop (the next one
       10 ms after each answer) until every driver is RUNNING: the time
       from the drop, and each status's latency until then (p99). Then
       until every driver has its warm spare.
   (b) memory: the PSS (``/proc/PID/smaps_rollup``) of every process below
       the daemon (with ``spawn: fork-server`` each driver and each spare is
       an init and the runtime, plus one template per env; with ``exec`` a
       keeper, an init and the runtime), summed, per driver version; and
       the spares' share.
   (c) idle CPU: after 3 s, the CPU time of the daemon and of every process
       below it over a window (10 s; 2 s with ``--quick``), in % of one CPU.
   (d) kill -> RUNNING: ``kill -9`` of a driver's process, then ``status``
       of it every 10 ms until a new process is RUNNING; one driver after
       another (20; 5 with ``--quick``), each once the previous one has its
       spare back.
   (e) calls (``_scale_calls.py``): 200 callers over 400 resources of the
       ledger, each caller looping on ``record`` over its 2 resources, over
       4 connections (``AsyncClient``, each resource always on the same
       one): 4 drivers x 100 resources against 100 drivers x 4 (20 x 20 with
       ``--quick``), both in this daemon, beside the floor
       (``_scale_floor.py``: the same load through a relay process to 4 and
       to 100 echo processes, no drivebay), in rounds with the order
       rotating; calls/s is the median of the windows, latencies are
       pooled, CPU used is the CPU time of all of them over the windows.
       Per call, from ``/proc``: CPU µs (and the Linux kernel's share),
       context switches (voluntary: the process slept and had to be woken;
       involuntary: preempted) and read/write syscalls of this process, of
       the daemon (the relay) and of every process below it (the echo
       processes). Then one window of each with ``perf stat`` counting the
       syscalls of each, and those of the daemon (relay) by name, when
       ``perf`` is there. (``scale_profile.py`` profiles the kernel's own
       Python code under the same two loads.)
   (f) ``stop all``: the time the request takes (it returns once every
       driver is STOPPED).
2. drivebayd, ``restart: {spare: false}``: (a) again, then 10,000 resources
   (1,000 with ``--quick``) added over the 100 drivers, 200 requests in
   flight over 4 connections: the time, and the daemon's RSS per resource.
3. A drivebayd in the other ``spawn`` mode (``exec``): (a), (b) and (d)
   again (``--spawn-modes``: only these, in each mode).

``--json`` ends with one object: ``start_100_s``, ``start_100_nospare_s``,
``pss_per_driver_mib``, ``pss_per_driver_exec_mib``, ``restart_ms_p50``,
``restart_ms_p99``, ``idle_cpu_pct`` (the daemon), ``idle_cpu_children_pct``,
``status_while_starting_ms`` (p99), ``stop_all_s``,
``calls_per_s_4_drivers``, ``calls_per_s_100_drivers``,
``calls_p99_ms_4_drivers``, ``calls_p99_ms_100_drivers``,
``add_10k_resources_s``, and more: ``calls_ratio`` (100 drivers / 4),
``floor`` (the same for the floor), ``per_call`` (by load and process),
``targets``, ``plan``, ``machine``, ``commit``. Every process started here
is stopped and reaped, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import _scale_calls
import _scale_proc
import supervise
import upgrade
from _scale_calls import CALLERS, CONNECTIONS, FEW, RESOURCES
from _scale_proc import Usage

from drivebay.client import AsyncClient

ROOT = Path(__file__).resolve().parents[2]
LEDGER = Path(__file__).resolve().parent / "fixtures" / "upgrade" / "ledger.py"
VERSION = "1.0.0"
POLL_S = 0.01
START_S = 120.0  # a deadline for the drivers to be RUNNING
BUILD_S = 600.0  # the same when the shared env is built first (it may download)
STOP_S = 60.0
SETTLE_S = 3.0  # after the spares are up, before the idle window: the start's tail
CHECKED = 10  # resources called after the many are added
BROKEN = ("FAILED", "FATAL", "INVALID", "BLOCKED")
NO_SPAWN = "not available: no spawn setting"


@dataclass(frozen=True)
class Plan:
    drivers: int
    kills: int
    idle_s: float
    rounds: int
    warmup_s: float
    window_s: float
    many: int
    floor: bool = True


FULL = Plan(drivers=100, kills=20, idle_s=10.0, rounds=3, warmup_s=0.5, window_s=3.0, many=10_000)
QUICK = Plan(drivers=20, kills=5, idle_s=2.0, rounds=1, warmup_s=0.3, window_s=1.0, many=1_000)


# -- a daemon with an empty drivers dir --------------------------------------------------------


def spawn_setting() -> tuple[str, str] | None:
    """(the default spawn mode, the other one) when the config has ``spawn``."""
    import msgspec

    from drivebay.kernel.config import Config

    if "spawn" not in {field.name for field in msgspec.structs.fields(Config)}:
        return None
    default = str(getattr(Config(), "spawn"))  # noqa: B009 (absent from today's Config)
    return default, "exec" if default != "exec" else "fork-server"


@contextlib.asynccontextmanager
async def drivebayd(
    root: Path, envs_dir: Path, extra: dict[str, Any], venv: Path | None = None
) -> AsyncIterator[Any]:
    """drivebayd (``venv``'s, default this one's) with ``extra`` config keys and
    no bundle yet, its admin client connected; always stopped and reaped."""
    config = upgrade.write_config(root, envs_dir, True, extra)
    (root / "drivers").mkdir()
    log_fd = os.open(root / "drivebayd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            str((venv / "bin" if venv else upgrade.BIN) / "drivebayd"),
            "--config",
            str(config),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,  # a Ctrl-C reaches only us; we stop it below
        )
    finally:
        os.close(log_fd)
    daemon = upgrade.Daemon(root, process)
    try:
        daemon.admin = await daemon.connect()
        # The drivers dir's watch is armed in a thread after the first scan: a
        # bundle moved in before that is not seen. Drop only once it watches.
        await upgrade.settle(watching(process.pid), 30, "drivebayd: the drivers dir watched")
        yield daemon
    finally:
        await daemon.admin.close()
        await _common.stop_process(process, STOP_S)


def watching(pid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return _scale_proc.inotify_watches(pid) > 0

    return check


def write_bundle(staging: Path, name: str) -> Path:
    bundle = staging / f"{name}-{VERSION}"
    (bundle / "src").mkdir(parents=True)
    (bundle / "driver.yaml").write_text(
        f"name: {name}\nversion: {VERSION}\ncategory: other\n"
        f"description: {name}, a ledger driver of the scale benchmark\n"
        "entrypoint: ledger:LedgerDriver\n"
    )
    (bundle / "LICENSE").write_text("Apache-2.0\n")
    (bundle / "src" / "ledger.py").write_text(LEDGER.read_text())
    return bundle


def driver_names(count: int) -> list[str]:
    return [f"d-{n:03d}" for n in range(count)]


def checked_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    broken = [row for row in rows if row["state"] in BROKEN]
    if broken:
        raise RuntimeError(f"drivebayd: {broken[0]['name']} {broken[0]['state']}: {broken[0]}")
    return rows


# -- (a) start ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    running_s: float  # drop -> every driver RUNNING
    spares_s: float | None  # drop -> every driver with its spare (None: spares off)
    status_ms: list[float]  # each status answered until every driver was RUNNING
    status_at_s: list[float]  # when each was sent, from the drop

    def slow(self, over_ms: float = 50.0) -> list[list[float]]:
        """[sent at s, took ms] of each status slower than ``over_ms``."""
        return [
            [round(at, 2), round(took, 1)]
            for at, took in zip(self.status_at_s, self.status_ms, strict=True)
            if took > over_ms
        ]


async def start_all(
    daemon: Any, names: list[str], spares: bool, deadline: float = START_S
) -> Start:
    """Drop one bundle per name; status in a loop until all are RUNNING."""
    staging, drivers = daemon.root / "staging", daemon.root / "drivers"
    bundles = [write_bundle(staging, name) for name in names]
    client: AsyncClient = daemon.admin
    latencies: list[float] = []
    sent_at: list[float] = []
    dropped = time.perf_counter()
    for bundle in bundles:
        os.rename(bundle, drivers / bundle.name)

    async def status() -> list[dict[str, Any]]:
        began = time.perf_counter()
        rows: list[dict[str, Any]] = await client.request("status")
        latencies.append((time.perf_counter() - began) * 1e3)
        sent_at.append(began - dropped)
        return checked_rows(rows)

    async def running() -> bool:
        rows = await status()
        return len(rows) == len(names) and all(row["state"] == "RUNNING" for row in rows)

    await upgrade.settle(running, deadline, f"drivebayd: {len(names)} drivers RUNNING")
    running_s = time.perf_counter() - dropped
    status_ms, status_at_s = list(latencies), list(sent_at)
    if not spares:
        return Start(running_s, None, status_ms, status_at_s)

    async def spared() -> bool:
        return all(row["spare_pid"] for row in checked_rows(await client.request("status")))

    await upgrade.settle(spared, START_S, f"drivebayd: {len(names)} spares")
    return Start(running_s, time.perf_counter() - dropped, status_ms, status_at_s)


# -- (b) memory, (c) idle CPU -----------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    versions: int
    processes: int
    total_kib: int  # every process below the daemon
    spares_kib: int  # the spares' processes among them
    daemon_kib: int
    by_depth_kib: dict[int, int]  # 1: the daemon's children (keepers), 2: theirs (inits), ...

    @property
    def per_driver_mib(self) -> float:
        return self.total_kib / self.versions / 1024


def memory(daemon_pid: int, rows: list[dict[str, Any]]) -> Memory:
    """PSS below the daemon, read from /proc (blocking: run it in a thread)."""
    below = _scale_proc.descendants(daemon_pid)
    spares: list[int] = []
    for row in rows:
        if row["spare_pid"]:
            spares += [row["spare_pid"], *_scale_proc.descendants(row["spare_pid"])]
    pss = {pid: _scale_proc.pss_kib(pid) for pid in below}
    by_depth: dict[int, int] = {}
    level, depth = _scale_proc.children(daemon_pid), 1
    while level:
        by_depth[depth] = sum(pss.get(pid, 0) for pid in level)
        level = [child for pid in level for child in _scale_proc.children(pid)]
        depth += 1
    return Memory(
        versions=len(rows),
        processes=len(below),
        total_kib=sum(pss.values()),
        spares_kib=sum(pss.get(pid, 0) for pid in set(spares)),
        daemon_kib=_scale_proc.pss_kib(daemon_pid),
        by_depth_kib=by_depth,
    )


@dataclass(frozen=True)
class Idle:
    seconds: float
    daemon: Usage
    children: Usage

    def pct(self, usage: Usage) -> float:
        return usage.cpu_ns / (self.seconds * 1e9) * 100


async def idle(daemon_pid: int, seconds: float) -> Idle:
    below = _scale_proc.descendants(daemon_pid)
    daemon_before, below_before = _scale_proc.usage([daemon_pid]), _scale_proc.usage(below)
    began = time.perf_counter()
    await asyncio.sleep(seconds)  # the window measured, not a wait for a condition
    took = time.perf_counter() - began
    daemon_used = _scale_proc.usage([daemon_pid]) - daemon_before
    return Idle(took, daemon_used, _scale_proc.usage(below) - below_before)


# -- (d) kill -> RUNNING ----------------------------------------------------------------------


async def restarts(daemon: Any, names: list[str], kills: int) -> list[float]:
    """ms from ``kill -9`` of a driver to a new process RUNNING, one per driver
    (spread over them), each once the previous victim has a spare again."""
    client: AsyncClient = daemon.admin
    samples = []
    for name in names[:: max(1, len(names) // kills)][:kills]:
        (row,) = await client.request("status", names=[name])
        old, old_spare = row["pid"], row["spare_pid"]
        began = time.perf_counter()
        os.kill(old, signal.SIGKILL)

        async def back(name: str = name, old: int = old) -> bool:
            (row,) = checked_rows(await client.request("status", names=[name]))
            return bool(row["state"] == "RUNNING" and row["pid"] and row["pid"] != old)

        await upgrade.settle(back, 30, f"{name} RUNNING again")
        samples.append((time.perf_counter() - began) * 1e3)

        async def spared(name: str = name, old_spare: int = old_spare) -> bool:
            (row,) = checked_rows(await client.request("status", names=[name]))
            return row["spare_pid"] not in (None, old_spare)

        await upgrade.settle(spared, 60, f"{name}: a new spare")
    return samples


# -- (f) stop all, 2. many resources ----------------------------------------------------------


async def stop_all(daemon: Any, names: list[str]) -> float:
    began = time.perf_counter()
    outcomes = await daemon.admin.request("stop", names=["all"])
    took = time.perf_counter() - began
    failed = [o for o in outcomes if not o["ok"]]
    if failed or len(outcomes) != len(names):
        raise RuntimeError(f"stop all: {len(outcomes)} outcomes, failed: {failed[:1]}")
    rows = await daemon.admin.request("status")
    running = [row["name"] for row in rows if row["state"] != "STOPPED" or row["pid"]]
    if running:
        raise RuntimeError(f"stop all returned with {running[:3]} not STOPPED")
    return took


@dataclass(frozen=True)
class Many:
    resources: int
    add_s: float
    rss_before_kib: int
    rss_after_kib: int
    checked: int


async def many_resources(daemon: Any, names: list[str], count: int) -> Many:
    placed = {f"m{n:05d}": names[n % len(names)] for n in range(count)}
    async with upgrade.connections(daemon, CONNECTIONS) as clients:
        before = _scale_proc.rss_kib(daemon.pid)
        began = time.perf_counter()
        await _scale_calls.add_resources(clients, placed)
        add_s = time.perf_counter() - began
        after = _scale_proc.rss_kib(daemon.pid)
        checked = 0
        for resource in list(placed)[:: max(1, count // CHECKED)][:CHECKED]:
            reply = await clients[0].call(resource, "whoami")
            checked += reply["resource"] == resource
    return Many(count, add_s, before, after, checked)


# -- running -----------------------------------------------------------------------------------


@dataclass
class Results:
    start: Start
    memory: Memory
    idle: Idle
    restarts_ms: list[float]
    calls: _scale_calls.Calls
    stop_all_s: float
    start_nospare: Start
    many: Many
    spawn: tuple[str, str] | None
    other_mode: tuple[Start, Memory, list[float]] | None


def settings(spares: bool, spawn: str | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"restart": {"spare": spares}}
    if spawn is not None:
        extra["spawn"] = spawn
    return extra


async def prime(root: Path, envs_dir: Path) -> None:
    """One driver RUNNING, so the drivers' shared env exists before anything is timed."""
    async with drivebayd(root, envs_dir, settings(False)) as daemon:
        await start_all(daemon, ["d-000"], spares=False, deadline=BUILD_S)


async def with_spares(root: Path, envs_dir: Path, plan: Plan, names: list[str]) -> tuple[Any, ...]:
    async with drivebayd(root, envs_dir, settings(True)) as daemon:
        _common.progress(f"scale: {len(names)} drivers, spares on: start ...")
        start = await start_all(daemon, names, spares=True)
        rows = checked_rows(await daemon.admin.request("status"))
        found = await asyncio.to_thread(memory, daemon.pid, rows)
        await asyncio.sleep(SETTLE_S)  # the start's tail, before the idle window
        _common.progress(f"scale: idle for {plan.idle_s:g} s ...")
        quiet = await idle(daemon.pid, plan.idle_s)
        _common.progress(f"scale: {plan.kills} kills ...")
        killed = await restarts(daemon, names, plan.kills)
        made = await _scale_calls.calls(daemon, names, plan, root)
        _common.progress("scale: stop all ...")
        stopped = await stop_all(daemon, names)
    return start, found, quiet, killed, made, stopped


async def in_mode(
    root: Path, envs_dir: Path, plan: Plan, names: list[str], mode: str
) -> tuple[Start, Memory, list[float]]:
    """(a), (b) and (d) with ``spawn: mode``: drop -> RUNNING, PSS, kill -> RUNNING."""
    async with drivebayd(root, envs_dir, settings(True, mode)) as daemon:
        _common.progress(f"scale: {len(names)} drivers, spawn: {mode} ...")
        start = await start_all(daemon, names, spares=True)
        rows = checked_rows(await daemon.admin.request("status"))
        found = await asyncio.to_thread(memory, daemon.pid, rows)
        _common.progress(f"scale: spawn: {mode}: {plan.kills} kills ...")
        killed = await restarts(daemon, names, plan.kills)
        return start, found, killed


async def spawn_modes(plan: Plan, root: Path, envs_dir: Path) -> dict[str, Any]:
    """``--spawn-modes``: only (a), (b) and (d), in each spawn mode, one after the other."""
    names = driver_names(plan.drivers)
    await prime(root / "prime", envs_dir)
    found: dict[str, Any] = {}
    for mode in ("fork-server", "exec"):
        start, mem, killed = await in_mode(root / mode, envs_dir, plan, names, mode)
        found[mode] = {
            "start_s": round(start.running_s, 3),
            "spares_ready_s": round(start.spares_s, 3),
            "pss_per_driver_mib": round(mem.per_driver_mib, 2),
            "pss_total_mib": round(mem.total_kib / 1024, 1),
            "processes": mem.processes,
            "pss_by_depth_mib": [round(kib / 1024, 1) for kib in mem.by_depth_kib.values()],
            "restart_ms_p50": round(statistics.median(killed), 1),
            "restart_ms_p99": round(p99(killed), 1),
        }
    return found


async def run_all(plan: Plan, root: Path, envs_dir: Path) -> Results:
    names = driver_names(plan.drivers)
    _common.progress("scale: a first driver (builds the shared env if needed) ...")
    await prime(root / "prime", envs_dir)
    start, found, quiet, killed, made, stopped = await with_spares(
        root / "spares", envs_dir, plan, names
    )
    async with drivebayd(root / "nospare", envs_dir, settings(False)) as daemon:
        _common.progress(f"scale: {len(names)} drivers, spares off: start ...")
        start_nospare = await start_all(daemon, names, spares=False)
        _common.progress(f"scale: {plan.many:,} resources ...")
        many = await many_resources(daemon, names, plan.many)
    spawn, other = spawn_setting(), None
    if spawn is not None:
        other = await in_mode(root / "other", envs_dir, plan, names, spawn[1])
    return Results(start, found, quiet, killed, made, stopped, start_nospare, many, spawn, other)


@dataclass(frozen=True)
class Other:
    """``--daemon LABEL:VENV:JSON``: one more drivebayd under the same load."""

    label: str
    venv: Path | None  # None: this venv's drivebayd
    config: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> Other:
        label, venv, config = text.split(":", 2)
        return cls(label, Path(venv) if venv else None, json.loads(config or "{}"))


async def calls_only(
    plan: Plan, root: Path, envs_dir: Path, others: list[Other], floor_batch: bool
) -> _scale_calls.Calls:
    """(e) alone, on a daemon with spares off, and on each of ``others`` (its
    windows taking turns with the first's in the same rounds)."""
    names = driver_names(plan.drivers)
    _common.progress("scale: a first driver (builds the shared env if needed) ...")
    await prime(root / "prime", envs_dir)
    async with contextlib.AsyncExitStack() as stack:
        daemon = await stack.enter_async_context(drivebayd(root / "a", envs_dir, settings(False)))
        _common.progress(f"scale: {len(names)} drivers: start ...")
        await start_all(daemon, names, spares=False)
        started = {}
        for n, other in enumerate(others):
            extra = {**settings(False), **other.config}
            each = await stack.enter_async_context(
                drivebayd(root / f"other-{n}", envs_dir, extra, other.venv)
            )
            _common.progress(f"scale: {len(names)} drivers of {other}: start ...")
            await start_all(each, names, spares=False)
            started[f"drivebayd {other.label}"] = each
        return await _scale_calls.calls(daemon, names, plan, root, started, floor_batch)


def calls_json(made: _scale_calls.Calls, plan: Plan) -> dict[str, Any]:
    """calls/s, p99 and the ratio of each load, and what each process used per call."""
    found: dict[str, Any] = {}
    for label, f in made.figures.items():
        if label.endswith(f", {plan.drivers} drivers"):
            name = label.removesuffix(f", {plan.drivers} drivers")
            few = made.figures[f"{name}, {FEW} drivers"]
            found[name] = {
                "calls_per_s_4": round(few.calls_per_s),
                "calls_per_s_100": round(f.calls_per_s),
                "calls_p99_ms_4": round(few.p99_ms, 3),
                "calls_p99_ms_100": round(f.p99_ms, 3),
                "calls_ratio": round(f.calls_per_s / few.calls_per_s, 3),
            }
    found["per_call"] = {
        label: {
            role: {k: round(v, 3) for k, v in values.items()} for role, values in f.per_call.items()
        }
        for label, f in made.figures.items()
    }
    found["per_window_calls_per_s"] = {
        label: [round(rate) for rate in f.per_window] for label, f in made.figures.items()
    }
    found["syscalls_per_call"] = made.syscalls
    return found


# -- reporting ---------------------------------------------------------------------------------


def p99(values: list[float]) -> float:
    return _common.percentile(sorted(values), 99)


def as_json(r: Results, plan: Plan) -> dict[str, Any]:
    few, spread = (f"{FEW} drivers", f"{plan.drivers} drivers")
    db = {
        key.removeprefix("drivebayd, "): f
        for key, f in r.calls.figures.items()
        if key.startswith("drivebayd, ")
    }
    floor = {
        key.removeprefix("floor, "): f
        for key, f in r.calls.figures.items()
        if key.startswith("floor, ")
    }
    pss = pss_by_mode(r)
    result: dict[str, Any] = {
        "start_100_s": r.start.running_s,
        "start_100_spares_ready_s": r.start.spares_s,
        "start_100_nospare_s": r.start_nospare.running_s,
        "pss_per_driver_mib": r.memory.per_driver_mib,
        "pss_per_driver_exec_mib": pss.get("exec"),
        "pss_total_mib": r.memory.total_kib / 1024,
        "pss_spares_mib": r.memory.spares_kib / 1024,
        "pss_daemon_mib": r.memory.daemon_kib / 1024,
        "processes_below_daemon": r.memory.processes,
        "restart_ms_p50": statistics.median(r.restarts_ms),
        "restart_ms_p99": p99(r.restarts_ms),
        "idle_cpu_pct": r.idle.pct(r.idle.daemon),
        "idle_cpu_children_pct": r.idle.pct(r.idle.children),
        "status_while_starting_ms": p99(r.start.status_ms),
        "status_while_starting_ms_p50": statistics.median(r.start.status_ms),
        "status_while_starting_ms_max": max(r.start.status_ms),
        "status_while_starting_requests": len(r.start.status_ms),
        "status_while_starting_slow": r.start.slow(),  # [sent at s, took ms] over 50 ms
        "status_while_starting_nospare_ms": p99(r.start_nospare.status_ms),
        "stop_all_s": r.stop_all_s,
        "calls_per_s_4_drivers": db[few].calls_per_s,
        "calls_per_s_100_drivers": db[spread].calls_per_s,
        "calls_p99_ms_4_drivers": db[few].p99_ms,
        "calls_p99_ms_100_drivers": db[spread].p99_ms,
        "calls_ratio": db[spread].calls_per_s / db[few].calls_per_s,
        "add_10k_resources_s": r.many.add_s,
        "kib_per_resource": (r.many.rss_after_kib - r.many.rss_before_kib) / r.many.resources,
    }
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    result["pss_per_driver_by_spawn_mode_mib"] = {k: round(v, 2) for k, v in pss.items()}
    result["pss_by_depth_mib"] = {
        str(depth): round(kib / 1024, 1) for depth, kib in r.memory.by_depth_kib.items()
    }
    result["spawn_setting"] = r.spawn[0] if r.spawn else NO_SPAWN
    if r.spawn is not None and r.other_mode is not None:
        result["start_100_by_spawn_mode_s"] = {
            r.spawn[0]: round(r.start.running_s, 3),
            r.spawn[1]: round(r.other_mode[0].running_s, 3),
        }
        result["restart_ms_by_spawn_mode"] = {
            mode: {"p50": round(statistics.median(ms), 1), "p99": round(p99(ms), 1)}
            for mode, ms in ((r.spawn[0], r.restarts_ms), (r.spawn[1], r.other_mode[2]))
        }
    if floor:
        result["floor"] = {
            "calls_per_s_4": round(floor[few].calls_per_s),
            "calls_per_s_100": round(floor[spread].calls_per_s),
            "calls_p99_ms_4": round(floor[few].p99_ms, 3),
            "calls_p99_ms_100": round(floor[spread].p99_ms, 3),
            "calls_ratio": round(floor[spread].calls_per_s / floor[few].calls_per_s, 3),
        }
    result["per_call"] = {
        label: {
            role: {k: round(v, 3) for k, v in values.items()} for role, values in f.per_call.items()
        }
        for label, f in r.calls.figures.items()
    }
    result["cpus_busy_pct"] = {
        label: round(f.cpus_busy * 100, 1) for label, f in r.calls.figures.items()
    }
    result["per_window_calls_per_s"] = {
        label: [round(rate) for rate in f.per_window] for label, f in r.calls.figures.items()
    }
    syscalls = r.calls.syscalls
    result["syscalls_per_call"] = (
        syscalls
        if isinstance(syscalls, str)
        else {
            label: {role: round(v, 2) for role, v in roles.items()}
            for label, roles in syscalls.items()
        }
    )
    result["restart_samples_ms"] = [round(v, 1) for v in r.restarts_ms]
    result["targets"] = {
        label: {"goal": goal, "value": round(value, 3), "met": met}
        for label, goal, value, met in targets(r, plan)
    }
    return result


def pss_by_mode(r: Results) -> dict[str, float]:
    """PSS per driver version by spawn mode measured ({} of modes: no spawn setting)."""
    if r.spawn is None:
        return {}
    found = {r.spawn[0]: r.memory.per_driver_mib}
    if r.other_mode is not None:
        found[r.spawn[1]] = r.other_mode[1].per_driver_mib
    return found


def targets(r: Results, plan: Plan) -> list[tuple[str, str, float, bool]]:
    """(target, goal, value, met) for each numeric target of the issue."""
    db = r.calls.figures
    ratio = (
        db[f"drivebayd, {plan.drivers} drivers"].calls_per_s
        / db[f"drivebayd, {FEW} drivers"].calls_per_s
    )
    n = plan.drivers
    rows = [
        (
            f"{n} drivers RUNNING after the drop, s",
            "<= 5",
            r.start.running_s,
            r.start.running_s <= 5,
        ),
        (
            "status p99 while they start, ms",
            "<= 50",
            p99(r.start.status_ms),
            p99(r.start.status_ms) <= 50,
        ),
        (
            "PSS per driver version, MiB",
            "<= 12",
            r.memory.per_driver_mib,
            r.memory.per_driver_mib <= 12,
        ),
        (f"calls/s {n} drivers / {FEW} drivers", ">= 0.5", ratio, ratio >= 0.5),
    ]
    return rows


def report(r: Results, plan: Plan) -> str:
    return "\n\n".join(
        [
            _main_table(r, plan),
            _calls_table(r.calls, plan),
            _per_call_table(r.calls),
            _common.format_table(
                ["target", "goal", "value", ""],
                [
                    [t, g, _common.number(v), "met" if met else "NOT met"]
                    for t, g, v, met in targets(r, plan)
                ],
            ),
        ]
    )


def _main_table(r: Results, plan: Plan) -> str:
    n, num = plan.drivers, _common.number
    spawn_label = f"spawn: {r.spawn[0]}" if r.spawn else "today's spawn (exec)"
    other = num(r.other_mode[1].per_driver_mib) if r.spawn and r.other_mode else NO_SPAWN
    other_label = f"spawn: {r.spawn[1]}" if r.spawn else "spawn: fork-server | exec"
    m = r.memory
    rows = [
        [f"drop -> {n} RUNNING, spares on, s", num(r.start.running_s)],
        [f"drop -> {n} spares ready, s", num(r.start.spares_s)],
        [f"drop -> {n} RUNNING, spares off, s", num(r.start_nospare.running_s)],
        [
            f"status while starting, ms p50 / p99 / max ({len(r.start.status_ms)} requests)",
            f"{num(statistics.median(r.start.status_ms))} / {num(p99(r.start.status_ms))} / "
            f"{num(max(r.start.status_ms))}",
        ],
        [f"PSS per driver version, MiB ({spawn_label})", num(m.per_driver_mib)],
        [f"PSS per driver version, MiB ({other_label})", other],
        [
            f"PSS below the daemon, MiB ({m.processes} processes), of it spares",
            f"{num(m.total_kib / 1024)}, {num(m.spares_kib / 1024)}",
        ],
        [
            "PSS below the daemon by depth, MiB (exec: keepers / inits / runtimes; "
            "fork-server: templates and inits / runtimes)",
            " / ".join(num(kib / 1024) for kib in m.by_depth_kib.values()),
        ],
        ["PSS of the daemon, MiB", num(m.daemon_kib / 1024)],
        [
            f"kill -> RUNNING, ms p50 / p99 ({len(r.restarts_ms)} kills)",
            f"{num(statistics.median(r.restarts_ms))} / {num(p99(r.restarts_ms))}",
        ],
        [
            f"idle CPU, % of one CPU over {r.idle.seconds:.0f} s: daemon / below it",
            f"{num(r.idle.pct(r.idle.daemon))} / {num(r.idle.pct(r.idle.children))}",
        ],
        ["stop all, s", num(r.stop_all_s)],
        [f"add {r.many.resources:,} resources (spares off), s", num(r.many.add_s)],
        [
            "daemon RSS per resource, KiB",
            num((r.many.rss_after_kib - r.many.rss_before_kib) / r.many.resources),
        ],
        [
            "resources answering as themselves after the add",
            f"{r.many.checked}/{min(CHECKED, r.many.resources)}",
        ],
    ]
    return _common.format_table([f"{n} drivers", ""], rows)


def _calls_table(calls: _scale_calls.Calls, plan: Plan) -> str:
    num, figures = _common.number, calls.figures
    rows = []
    for label, f in figures.items():
        base = figures[label.replace(f"{plan.drivers} drivers", f"{FEW} drivers")]
        ratio = f"{f.calls_per_s / base.calls_per_s:.2f}"
        busy = f"{f.cpus_busy * 100:.0f}"
        rows.append([label, num(f.calls_per_s), num(f.p50_ms), num(f.p99_ms), ratio, busy])
    headers = [
        f"{CALLERS} callers, {RESOURCES} resources (median of {plan.rounds})",
        "calls/s",
        "p50 ms",
        "p99 ms",
        f"/ {FEW} drivers",
        "CPU used, % of one",
    ]
    return _common.format_table(headers, rows)


ROLE_LABELS = {"here": "this process", "hub": "drivebayd / relay", "workers": "drivers / echoes"}


def _per_call_table(calls: _scale_calls.Calls) -> str:
    num, syscalls = _common.number, calls.syscalls
    rows = []
    for label, f in calls.figures.items():
        for role, name in ROLE_LABELS.items():
            c = f.per_call[role]
            traced = "-" if isinstance(syscalls, str) else num(syscalls[label][role])
            rows.append(
                [
                    f"{label}: {name}",
                    num(c["cpu_us"]),
                    f"{c['system_share'] * 100:.0f}",
                    num(c["voluntary"], 2),
                    num(c["cpu_us"] / c["voluntary"]) if c["voluntary"] else "-",
                    num(c["involuntary"], 2),
                    num(c["rw_syscalls"], 2),
                    traced,
                ]
            )
    headers = [
        "per call",
        "CPU µs",
        "% in kernel",
        "sleeps (vol. cs)",
        "CPU µs per sleep",
        "preempted",
        "r+w syscalls",
        "syscalls (perf)",
    ]
    table = _common.format_table(headers, rows)
    if isinstance(syscalls, str):
        return f"{table}\nsyscalls (perf): {syscalls}"
    lines = [table, "", "syscalls per call of drivebayd / the relay, by name (perf):"]
    for label, found in syscalls.items():
        named = [(k.removeprefix("hub "), v) for k, v in found.items() if k.startswith("hub ")]
        lines.append(f"  {label}: " + ", ".join(f"{k} {num(v, 2)}" for k, v in named))
    return "\n".join(lines)


def commit() -> str:
    try:
        found = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    import uvloop

    parser = _common.bench_parser(
        __doc__.split("\n\n")[0],
        "20 drivers, 1,000 resources, shorter windows and fewer kills",
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="leave out the relay-and-echo floor"
    )
    parser.add_argument(
        "--only",
        choices=["calls"],
        help="run only (e), the calls, on a daemon with spares off (full plan's 100 drivers "
        "unless --quick)",
    )
    parser.add_argument(
        "--daemon",
        type=Other.parse,
        action="append",
        default=[],
        metavar="LABEL:VENV:JSON",
        help="with --only calls: one more drivebayd, VENV's (empty: this one's) with the "
        """config keys JSON (e.g. 'normal::{"scheduling": "normal"}'), its windows taking """
        "turns with the first's; may be repeated",
    )
    parser.add_argument(
        "--floor-batch",
        action="store_true",
        help="with --only calls: a second floor whose echo processes are SCHED_BATCH",
    )
    parser.add_argument("--rounds", type=int, help="rounds of the calls (default: the plan's)")
    parser.add_argument(
        "--spawn-modes",
        action="store_true",
        help="only drop -> RUNNING, PSS and kill -> RUNNING, in each spawn mode",
    )
    options = parser.parse_args(argv)
    plan = QUICK if options.quick else FULL
    plan = dataclasses.replace(plan, floor=not options.no_floor)
    if options.rounds:
        plan = dataclasses.replace(plan, rounds=options.rounds)
    options.envs_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = _common.machine()["loadavg_1m"]
    mode = "quick" if options.quick else "full"
    if options.only == "calls":
        calls_main(options, plan, mode, started, load_before)
        return
    if options.spawn_modes:
        with (
            supervise.reaping_orphans(),
            tempfile.TemporaryDirectory(prefix="drivebay-scale-") as tmp,
        ):
            modes = uvloop.run(spawn_modes(plan, Path(tmp), options.envs_dir))
        print(
            json.dumps({"spawn_modes": modes, "plan": dataclasses.asdict(plan), "commit": commit()})
        )
        return
    with supervise.reaping_orphans(), tempfile.TemporaryDirectory(prefix="drivebay-scale-") as tmp:
        results = uvloop.run(run_all(plan, Path(tmp), options.envs_dir))
    info = {**_common.machine(), "loadavg_1m_before": load_before}
    print(report(results, plan))
    print(
        f"\n{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_1m_before']} before, {info['loadavg_1m']} after, "
        f"{mode} run, commit {commit()}, {time.monotonic() - started:.0f} s"
    )
    if options.json:
        _common.print_json_last(
            {
                **as_json(results, plan),
                "mode": mode,
                "plan": dataclasses.asdict(plan),
                "commit": commit(),
                "machine": info,
            }
        )


def calls_main(options: Any, plan: Plan, mode: str, started: float, load_before: Any) -> None:
    import uvloop

    with supervise.reaping_orphans(), tempfile.TemporaryDirectory(prefix="drivebay-scale-") as tmp:
        made = uvloop.run(
            calls_only(plan, Path(tmp), options.envs_dir, options.daemon, options.floor_batch)
        )
    info = {**_common.machine(), "loadavg_1m_before": load_before}
    print(_calls_table(made, plan))
    print()
    print(_per_call_table(made))
    print(
        f"\n{info['nproc']} CPUs, load {info['loadavg_1m_before']} before, "
        f"{info['loadavg_1m']} after, {mode} calls-only run, commit {commit()}, "
        f"{time.monotonic() - started:.0f} s"
    )
    if options.json:
        _common.print_json_last(
            {**calls_json(made, plan), "mode": f"{mode} calls", "commit": commit(), "machine": info}
        )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # every process is reaped by then; spare the traceback
        sys.exit(130)
