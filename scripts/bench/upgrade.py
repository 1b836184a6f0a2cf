"""Resources and hot-upgrade benchmark: the kernel's actors under load (issue 5).

Run with the project venv, from the repository root, after compiling the
project's bytecode (with PYTHONDONTWRITEBYTECODE set, every process would
otherwise compile its imports)::

    .venv/bin/python -m compileall -q kernel sandbox protocol
    .venv/bin/python scripts/bench/upgrade.py [--quick] [--json] [--metrics on|off]

``--metrics off`` runs the daemons with ``metrics: {enabled: false}`` (calls
not counted); ``scripts/bench/metrics_overhead.py`` compares the two.

Every variant calls the same trivial async operation, ``record`` of the
driver ``fixtures/upgrade/ledger.py`` (it appends a line to an in-memory
ledger), on 100 resources with 3 callers each (300 calls in flight), from
this process, on uvloop:

- *bare RPC*: ``DriverProcess.call`` straight to the driver process of the
  kernel below (the same process, environment and attached instances); no
  actors in between;
- *kernel in process*: a ``kernel.kernel.Kernel`` run in this process (no
  control server), called with ``kernel.book.call``: the actor path without
  the control-socket hop;
- *drivebayd*: a real daemon, resources added with ``resource-add``, calls
  over 4 ``AsyncClient`` connections (each resource on one of them, so the
  daemon sees each resource's calls in the order they were made).

1. Steady state: the three run side by side and are measured in turn, in
   rounds (the order rotating), so that a change in the machine's load hits
   all of them alike: calls/s is the median of the rounds, latencies are
   pooled, CPU time per call is read from ``/proc`` for each process.
2. Upgrades: with the load on drivebayd running, a steady window, then new
   versions dropped one after another, each once status shows only the
   previous one RUNNING (its old process drained and gone). The driver's
   ledger gives lost, duplicated and reordered operations over the daemon's
   whole life; the daemon's log gives every handover's switch time.
3. 10,000 resources: a fresh daemon, resources added over the control socket
   (200 requests in flight), its RSS before and after, and a call to a few.
4. Stateful: tcp-forward's 100 resources, each relaying 10 connections,
   handed with their sockets from version to version under load, against
   the same resources moved without state (``_stateful.py`` says how).

Latencies are per call, from the caller's side; calls/s count the calls
started in the measured window, after a warm-up. Driver environments are
kept between runs in ``--envs-dir``. Every process started here is stopped
and reaped, also on Ctrl-C.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import itertools
import json
import logging
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common
import _stateful

from drivebay.client import AsyncClient

BIN = Path(sys.executable).parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "upgrade"
DRIVER = "ledger"
FIRST = "1.0.0"
POLL_S = 0.01
STOP_S = 60.0
CHECKED = 10  # resources called after the 10,000 are added
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
LABELS = (
    "bare RPC (DriverProcess.call)",  # to the in-process kernel's driver process
    "kernel in process (book.call)",
    "drivebayd (control socket)",
)


@dataclass(frozen=True)
class Plan:
    rounds: int
    warmup_s: float
    window_s: float  # per variant and round
    steady_s: float  # before the upgrades
    upgrades: int
    resources: int = 100
    callers_per_resource: int = 3
    connections: int = 4
    many: int = 10_000
    add_in_flight: int = 200
    tail_s: float = 0.5  # load after the last upgrade
    metrics: bool = True  # the daemons' metrics.enabled: calls counted, or not
    stateful: _stateful.StatefulPlan = _stateful.FULL


FULL = Plan(rounds=5, warmup_s=0.5, window_s=2.0, steady_s=5.0, upgrades=10)
QUICK = Plan(
    rounds=2, warmup_s=0.3, window_s=1.0, steady_s=1.5, upgrades=3, stateful=_stateful.QUICK
)

Call = Callable[[int, int], Awaitable[Any]]  # (op id, seq) -> the call's reply


# -- load --------------------------------------------------------------------------------


class Ops:
    """Every call made to one target. Op ids count from 0, seqs from 1 per
    resource, both in the order the calls are made; ``issued[op_id]`` is
    (resource, seq)."""

    def __init__(self) -> None:
        self.issued: list[tuple[str, int]] = []
        self.failures: list[str] = []
        self._seqs: dict[str, itertools.count[int]] = {}

    def next(self, resource: str) -> tuple[int, int]:
        seq = next(self._seqs.setdefault(resource, itertools.count(1)))
        self.issued.append((resource, seq))
        return len(self.issued) - 1, seq


@dataclass
class Target:
    """What a load runs against: a call per resource, and the processes doing the work."""

    label: str
    calls: dict[str, Call]
    pids: dict[str, int]  # role -> pid, for CPU time per call
    ops: Ops = field(default_factory=Ops)


@dataclass(frozen=True)
class Sample:
    """The calls started within one window."""

    calls: int
    seconds: float
    latencies: list[float]  # seconds, sorted
    cpu_s: dict[str, float]  # role -> CPU seconds spent in the window


class Load:
    """Callers keeping ``per_resource`` calls in flight on every resource until ``stop``."""

    def __init__(self, target: Target, per_resource: int) -> None:
        self.target = target
        self._per_resource = per_resource
        self.starts = array.array("d")  # perf_counter at each call's start
        self.latencies = array.array("d")  # seconds
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for resource, call in self.target.calls.items():
                for _ in range(self._per_resource):
                    group.create_task(self._caller(resource, call))

    async def _caller(self, resource: str, call: Call) -> None:
        clock, ops = time.perf_counter, self.target.ops
        while not self.stop.is_set():
            op_id, seq = ops.next(resource)
            start = clock()
            try:
                await call(op_id, seq)
            except Exception as exc:
                ops.failures.append(f"{resource} op {op_id}: {type(exc).__name__}: {exc}")
            self.starts.append(start)
            self.latencies.append(clock() - start)

    def sample(self, start: float, end: float, cpu_s: dict[str, float] | None = None) -> Sample:
        latencies = sorted(
            latency
            for began, latency in zip(self.starts, self.latencies, strict=True)
            if start <= began < end
        )
        if not latencies:
            raise RuntimeError(f"{self.target.label}: no call started in the window")
        return Sample(len(latencies), end - start, latencies, cpu_s or {})


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time of each process so far."""
    times = {}
    for role, pid in pids.items():
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        times[role] = (int(fields[11]) + int(fields[12])) * TICK_S
    return times


async def measure(target: Target, plan: Plan) -> Sample:
    """Warm up, then one window of ``plan.window_s``; the load ends with it."""
    load = Load(target, plan.callers_per_resource)
    async with asyncio.TaskGroup() as group:
        group.create_task(load.run())
        await asyncio.sleep(plan.warmup_s)
        before, start = cpu_seconds(target.pids), time.perf_counter()
        await asyncio.sleep(plan.window_s)
        end, after = time.perf_counter(), cpu_seconds(target.pids)
        load.stop.set()
    return load.sample(start, end, {role: after[role] - before[role] for role in after})


async def rounds(targets: list[Target], plan: Plan) -> dict[str, list[Sample]]:
    """``plan.rounds`` windows of each target, interleaved, the order rotating."""
    samples: dict[str, list[Sample]] = {target.label: [] for target in targets}
    for number in range(plan.rounds):
        _common.progress(f"upgrade: steady state, round {number + 1}/{plan.rounds} ...")
        shift = number % len(targets)
        for target in targets[shift:] + targets[:shift]:
            samples[target.label].append(await measure(target, plan))
    return samples


@dataclass(frozen=True)
class Figures:
    calls_per_s: float  # median of the windows
    p50_ms: float  # of every call of every window
    p99_ms: float
    calls: int
    cpu_us: dict[str, float]  # role -> CPU µs per call
    per_window: list[float]  # calls/s of each window


def summarise(samples: list[Sample]) -> Figures:
    latencies = sorted(itertools.chain.from_iterable(s.latencies for s in samples))
    calls = sum(s.calls for s in samples)
    roles = samples[0].cpu_s.keys()
    return Figures(
        calls_per_s=statistics.median(s.calls / s.seconds for s in samples),
        p50_ms=_common.percentile(latencies, 50) * 1e3,
        p99_ms=_common.percentile(latencies, 99) * 1e3,
        calls=calls,
        cpu_us={role: sum(s.cpu_s[role] for s in samples) / calls * 1e6 for role in roles},
        per_window=[s.calls / s.seconds for s in samples],
    )


def resource_ids(prefix: str, count: int) -> list[str]:
    width = len(str(count - 1))
    return [f"{prefix}{n:0{width}}" for n in range(count)]


def _record(invoke: Callable[..., Awaitable[Any]], resource: str, op_id: int, seq: int) -> Any:
    """A ``record`` call through ``invoke(resource, op, args)``."""
    return invoke(resource, "record", {"number": op_id, "seq": seq})


def record_calls(invoke: Callable[..., Awaitable[Any]], resources: list[str]) -> dict[str, Call]:
    return {resource: functools.partial(_record, invoke, resource) for resource in resources}


# -- the kernel in this process ----------------------------------------------------------------


def daemon_settings(root: Path, envs_dir: Path, metrics: bool = True) -> dict[str, Any]:
    """The config of a daemon (or in-process kernel) in ``root``: defaults but for
    the paths, ``settle_s`` (bundles are renamed into place at once), the
    ledger's path and whether calls are counted (``--metrics``)."""
    return {
        "metrics": {"enabled": metrics},
        "state_dir": str(root / "state"),
        "drivers_dir": str(root / "drivers"),
        "socket": str(root / "ctl.sock"),
        "envs_dir": str(envs_dir),
        "settle_s": 0.2,
        "drivers": {DRIVER: {"env": {"LEDGER_PATH": str(root / "ledger.txt")}}},
    }


def drop_bundle(root: Path, version: str) -> None:
    """Write the ledger bundle ``version`` beside the drivers dir, then move it in."""
    bundle = root / "staging" / f"{DRIVER}-{version}"
    (bundle / "src").mkdir(parents=True)
    (bundle / "driver.yaml").write_text(
        f"name: {DRIVER}\nversion: {version}\ncategory: storage\n"
        "description: the ledger driver of the upgrade benchmark\n"
        "entrypoint: ledger:LedgerDriver\n"
    )
    (bundle / "LICENSE").write_text("Apache-2.0\n")
    (bundle / "src" / "ledger.py").write_text((FIXTURE / "ledger.py").read_text())
    (root / "drivers").mkdir(parents=True, exist_ok=True)
    os.rename(bundle, root / "drivers" / bundle.name)


async def settle(check: Callable[[], Awaitable[bool]], deadline: float, what: str) -> None:
    """Ask ``check`` every POLL_S until it says yes; TimeoutError past ``deadline`` s.
    (The daemon and the kernel offer no event for these states: they are polled.)"""
    try:
        async with asyncio.timeout(deadline):
            while True:
                if await check():
                    return
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise TimeoutError(f"{what}: not within {deadline:g} s") from None


@contextlib.asynccontextmanager
async def in_process_kernel(root: Path, envs_dir: Path, metrics: bool) -> AsyncIterator[Any]:
    """A ``Kernel`` in this process with the ledger driver RUNNING; always shut down."""
    import msgspec

    from drivebay.kernel.config import Config
    from drivebay.kernel.kernel import Kernel

    drop_bundle(root, FIRST)
    kernel = Kernel(msgspec.convert(daemon_settings(root, envs_dir, metrics), Config))

    async def running() -> bool:
        return kernel.book is not None and kernel.running(DRIVER)

    async with asyncio.TaskGroup() as group:
        group.create_task(kernel.run(), name="in-process kernel")
        try:
            await settle(running, 120, "in-process kernel: ledger RUNNING")
            yield kernel
        finally:
            kernel.shutdown()


async def kernel_targets(
    stack: contextlib.AsyncExitStack, root: Path, envs_dir: Path, plan: Plan
) -> tuple[Target, Target]:
    """The in-process kernel's actors, and a bare RPC to its own driver process:
    the bare figure is then the same process, interpreter and environment the
    kernel uses (a process started apart from the kernel would run in the
    bench's venv, with other packages, e.g. uvloop, than a driver's env)."""
    resources = resource_ids("r", plan.resources)
    kernel = await stack.enter_async_context(in_process_kernel(root, envs_dir, plan.metrics))
    book = kernel.book
    await asyncio.gather(*(book.add(r, DRIVER, None, []) for r in resources))
    # A call each: every instance is attached before the bare RPC reaches it.
    await asyncio.gather(*(book.call(r, "whoami", {}, None) for r in resources))
    slot = kernel.slot(DRIVER)
    pids = {"here": os.getpid(), "driver": slot.pid}
    invoke = functools.partial(_book_call, book)
    bare = Target(LABELS[0], record_calls(slot.process.call, resources), pids)
    return bare, Target(LABELS[1], record_calls(invoke, resources), pids)


def _book_call(book: Any, resource: str, op: str, args: dict[str, Any]) -> Any:
    return book.call(resource, op, args, None)


# -- drivebayd ---------------------------------------------------------------------------------


class Daemon:
    """A drivebayd in ``root`` (config, drivers, log) and its admin connection."""

    def __init__(self, root: Path, process: asyncio.subprocess.Process) -> None:
        self.root = root
        self.process = process
        self.log_path = root / "drivebayd.log"
        self.admin = AsyncClient()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def connect(self) -> AsyncClient:
        """A new connection; retried while the socket is not there yet."""
        async with asyncio.timeout(30):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"drivebayd exited {self.process.returncode}; see its log")
                try:
                    return await AsyncClient.connect(str(self.root / "ctl.sock"))
                except OSError:
                    await asyncio.sleep(POLL_S)

    async def rows(self) -> list[dict[str, Any]]:
        rows = [r for r in await self.admin.request("status") if r["name"] == DRIVER]
        broken = [r for r in rows if r["state"] in ("FAILED", "FATAL", "INVALID", "BLOCKED")]
        if broken:
            raise RuntimeError(f"drivebayd: {DRIVER}@{broken[0]['version']}: {broken[0]}")
        return rows

    async def wait_only(self, version: str, deadline: float = 120) -> None:
        """Until status shows ``version`` RUNNING and no other version of the driver."""

        async def only() -> bool:
            rows = await self.rows()
            return [(r["version"], r["state"]) for r in rows] == [(version, "RUNNING")]

        await settle(only, deadline, f"{DRIVER}@{version} alone RUNNING")

    async def driver_pid(self) -> int:
        (row,) = await self.rows()
        return int(row["pid"])


def write_config(
    root: Path, envs_dir: Path, metrics: bool, extra: dict[str, Any] | None = None
) -> Path:
    root.mkdir(parents=True)
    config = root / "drivebay.yaml"
    settings = {**daemon_settings(root, envs_dir, metrics), **(extra or {})}
    config.write_text(json.dumps(settings))  # JSON is YAML
    return config


@contextlib.asynccontextmanager
async def drivebayd(
    root: Path, envs_dir: Path, metrics: bool = True, extra: dict[str, Any] | None = None
) -> AsyncIterator[Daemon]:
    """drivebayd with the ledger driver's first version RUNNING (``extra``:
    more config keys); always stopped and reaped."""
    config = write_config(root, envs_dir, metrics, extra)
    drop_bundle(root, FIRST)
    log_fd = os.open(root / "drivebayd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            str(BIN / "drivebayd"),
            "--config",
            str(config),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,  # a Ctrl-C reaches only us; we stop it below
        )
    finally:
        os.close(log_fd)
    daemon = Daemon(root, process)
    try:
        daemon.admin = await daemon.connect()
        await daemon.wait_only(FIRST)
        yield daemon
    finally:
        await daemon.admin.close()
        await _common.stop_process(process, STOP_S)


@contextlib.asynccontextmanager
async def connections(daemon: Daemon, count: int) -> AsyncIterator[list[AsyncClient]]:
    clients: list[AsyncClient] = []
    try:
        for _ in range(count):
            clients.append(await daemon.connect())
        yield clients
    finally:
        for client in clients:
            await client.close()


async def add_resources(clients: list[AsyncClient], ids: list[str], in_flight: int) -> None:
    """``resource-add`` every id, ``in_flight`` requests at a time over ``clients``."""
    slots = asyncio.Semaphore(in_flight)

    async def add(client: AsyncClient, resource: str) -> None:
        async with slots:
            await client.request(
                "resource-add", {"id": resource, "driver": DRIVER, "assignments": []}
            )

    async with asyncio.TaskGroup() as group:
        for n, resource in enumerate(ids):
            group.create_task(add(clients[n % len(clients)], resource))


async def daemon_target(daemon: Daemon, clients: list[AsyncClient], plan: Plan) -> Target:
    resources = resource_ids("r", plan.resources)
    await add_resources(clients, resources, plan.resources)
    calls: dict[str, Call] = {}
    for n, resource in enumerate(resources):  # each resource always on the same connection
        calls.update(record_calls(clients[n % len(clients)].call, [resource]))
    pids = {"here": os.getpid(), "daemon": daemon.pid, "driver": await daemon.driver_pid()}
    return Target(LABELS[2], calls, pids)


# -- upgrades under load -----------------------------------------------------------------------


@dataclass(frozen=True)
class Upgrade:
    version: str
    dropped_wall: float  # time.time(), to compare with the daemon's log
    dropped: float  # perf_counter
    done: float  # perf_counter: status shows only this version, RUNNING


def versions(count: int) -> list[str]:
    return [f"1.0.{n}" for n in range(1, count + 1)]


async def upgrade(daemon: Daemon, version: str) -> Upgrade:
    wall, dropped = time.time(), time.perf_counter()
    drop_bundle(daemon.root, version)
    await daemon.wait_only(version)
    return Upgrade(version, wall, dropped, time.perf_counter())


async def upgrades_under_load(
    daemon: Daemon, target: Target, plan: Plan
) -> tuple[Sample, Sample, list[Upgrade]]:
    """(the steady window just before, the upgrades' window, each upgrade)."""
    load = Load(target, plan.callers_per_resource)
    async with asyncio.TaskGroup() as group:
        group.create_task(load.run())
        await asyncio.sleep(plan.warmup_s)
        start = time.perf_counter()
        await asyncio.sleep(plan.steady_s)
        before = load.sample(start, time.perf_counter())
        _common.progress(f"upgrade: {plan.upgrades} upgrades under load ...")
        done = [await upgrade(daemon, version) for version in versions(plan.upgrades)]
        await asyncio.sleep(plan.tail_s)
        load.stop.set()
    return before, load.sample(done[0].dropped, done[-1].done), done


async def flush_ledger(client: AsyncClient, resources: list[str]) -> None:
    """Each instance writes its lines when detached or told to: tell the last ones."""
    await asyncio.gather(*(client.call(resource, "flush") for resource in resources))


# -- the ledger --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerCheck:
    issued: int
    ran: int
    lost: int  # issued, never run
    duplicated: int  # runs beyond an op's first
    reordered: int  # ran after an op of the same resource made later
    went_back: int  # ran on an older version than an earlier op of its resource
    unknown: int  # a line naming an op that was not made (or not so)
    failed: int  # calls that raised
    per_version: dict[str, int]


def check_ledger(path: Path, ops: Ops, order: list[str]) -> LedgerCheck:
    issued = ops.issued
    runs = bytearray(len(issued))
    by_resource: dict[str, list[tuple[int, int, int]]] = {}
    per_version = dict.fromkeys(order, 0)
    rank = {version: n for n, version in enumerate(order)}
    unknown = duplicated = 0
    for line in path.read_bytes().decode().splitlines():
        op, made, resource, version, at = line.split()
        op_id, seq = int(op), int(made)
        if not 0 <= op_id < len(issued) or issued[op_id] != (resource, seq):
            unknown += 1
            continue
        duplicated += runs[op_id] > 0
        runs[op_id] = min(runs[op_id] + 1, 255)
        per_version[version] += 1
        by_resource.setdefault(resource, []).append((int(at), seq, rank[version]))
    reordered = went_back = 0
    for entries in by_resource.values():
        entries.sort()
        top_seq = top_rank = 0
        for _, seq, version_rank in entries:
            reordered += seq < top_seq
            went_back += version_rank < top_rank
            top_seq, top_rank = max(top_seq, seq), max(top_rank, version_rank)
    ran = len(issued) - runs.count(0)
    return LedgerCheck(
        issued=len(issued),
        ran=ran,
        lost=len(issued) - ran,
        duplicated=duplicated,
        reordered=reordered,
        went_back=went_back,
        unknown=unknown,
        failed=len(ops.failures),
        per_version=per_version,
    )


# -- the daemon's log --------------------------------------------------------------------------

_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


@dataclass(frozen=True)
class Handover:
    version: str
    drop_to_running_ms: float  # bundle moved in -> the new version entered RUNNING (healthy)
    switch_ms: float  # the daemon's own figure: handover start -> every actor switched
    running_to_switched_ms: float  # log time of "entered RUNNING" -> "switched"
    drop_to_alone_ms: float  # bundle moved in -> status shows only it, RUNNING
    old_exit: str  # how the replaced version's process ended, from the log


def log_time(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def handovers(log_path: Path, upgrades: list[Upgrade]) -> list[Handover]:
    """Per upgrade, the timings from the daemon's INFO lines."""
    log = log_path.read_text(errors="replace")
    found = []
    for previous, step in zip([FIRST, *(u.version for u in upgrades)], upgrades, strict=False):
        name = re.escape(f"{DRIVER}@{step.version}")
        running = re.search(rf"^{_STAMP} .*{name} entered RUNNING", log, re.M)
        switched = re.search(
            rf"^{_STAMP} .*{name}: all (\d+) resources switched in ([\d.]+) ms", log, re.M
        )
        if running is None or switched is None:
            raise RuntimeError(f"the daemon's log lacks the RUNNING or switch line of {name}")
        running_at, switched_at = log_time(running[1]), log_time(switched[1])
        stopped = re.search(rf"stopped: {re.escape(f'{DRIVER}@{previous}')} \((.*)\)$", log, re.M)
        found.append(
            Handover(
                step.version,
                (running_at - step.dropped_wall) * 1e3,
                float(switched[3]),
                (switched_at - running_at) * 1e3,
                (step.done - step.dropped) * 1e3,
                stopped[1] if stopped else "not logged",
            )
        )
    return found


# -- steady state and upgrades, one daemon -----------------------------------------------------


@dataclass
class LoadResults:
    steady: dict[str, Figures]  # by target label
    before: Figures  # drivebayd, the window just before the upgrades
    during: Figures  # drivebayd, while upgrading
    ledger: LedgerCheck
    handovers: list[Handover]


async def under_load(plan: Plan, root: Path, envs_dir: Path) -> LoadResults:
    """Steady state of the three targets, then upgrades of drivebayd; and its log."""
    async with (
        drivebayd(root / "daemon", envs_dir, plan.metrics) as daemon,
        connections(daemon, plan.connections) as clients,
    ):
        ours = await daemon_target(daemon, clients, plan)
        async with contextlib.AsyncExitStack() as stack:
            targets = [*await kernel_targets(stack, root / "in-process", envs_dir, plan), ours]
            steady = {label: summarise(s) for label, s in (await rounds(targets, plan)).items()}
        before, during, done = await upgrades_under_load(daemon, ours, plan)
        await flush_ledger(clients[0], list(ours.calls))
    ledger = check_ledger(daemon.root / "ledger.txt", ours.ops, [FIRST, *versions(plan.upgrades)])
    timings = handovers(daemon.log_path, done)
    return LoadResults(steady, summarise([before]), summarise([during]), ledger, timings)


# -- 10,000 resources --------------------------------------------------------------------------


@dataclass(frozen=True)
class Many:
    resources: int
    add_s: float
    rss_before_mb: float
    rss_after_mb: float
    driver_rss_mb: float
    checked: int  # calls to random resources that answered as themselves


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def many_resources(plan: Plan, root: Path, envs_dir: Path) -> Many:
    ids = resource_ids("m", plan.many)
    async with (
        drivebayd(root, envs_dir, plan.metrics) as daemon,
        connections(daemon, plan.connections) as clients,
    ):
        before = rss_mb(daemon.pid)
        start = time.perf_counter()
        await add_resources(clients, ids, plan.add_in_flight)
        add_s = time.perf_counter() - start
        after = rss_mb(daemon.pid)
        (row,) = await daemon.rows()
        if row["resources"] != plan.many:
            raise RuntimeError(f"status shows {row['resources']} resources, not {plan.many}")
        checked = 0
        for resource in random.Random(5).sample(ids, CHECKED):
            reply = await clients[0].call(resource, "whoami")
            checked += reply == {"resource": resource, "version": FIRST}
        return Many(plan.many, add_s, before, after, rss_mb(row["pid"]), checked)


# -- report ------------------------------------------------------------------------------------


@dataclass
class Results:
    load: LoadResults
    many: Many
    stateful: _stateful.Stateful

    @property
    def bare(self) -> Figures:
        return self.load.steady[LABELS[0]]

    @property
    def in_process(self) -> Figures:
        return self.load.steady[LABELS[1]]

    @property
    def daemon(self) -> Figures:
        return self.load.steady[LABELS[2]]


def targets(r: Results) -> list[tuple[str, str, str, bool]]:
    """(target, goal, value, met) for each target of the issue."""
    ratio = r.bare.calls_per_s / r.daemon.calls_per_s
    in_ratio = r.bare.calls_per_s / r.in_process.calls_per_s
    before, during = r.load.before.p99_ms, r.load.during.p99_ms
    c = r.load.ledger
    zeros = [c.lost, c.duplicated, c.reordered, c.failed]
    return [
        ("bare calls/s / drivebayd calls/s", "<= 1.5", f"{ratio:.2f}", ratio <= 1.5),
        ("bare calls/s / in-process kernel calls/s", "<= 1.5", f"{in_ratio:.2f}", in_ratio <= 1.5),
        (
            "p99 during upgrades, ms",
            f"<= p99 before + 20 = {before + 20:.1f}",
            f"{during:.1f}",
            during <= before + 20,
        ),
        (
            "lost / duplicated / reordered / failed",
            "0 / 0 / 0 / 0",
            " / ".join(map(str, zeros)),
            not any(zeros),
        ),
        (
            f"daemon RSS with {r.many.resources:,} resources, MB",
            "< 200",
            f"{r.many.rss_after_mb:.1f}",
            r.many.rss_after_mb < 200,
        ),
        *_stateful.targets(r.stateful),
    ]


def report(r: Results, plan: Plan) -> str:
    target_rows = [[t, g, v, "met" if met else "NOT met"] for t, g, v, met in targets(r)]
    return "\n\n".join(
        [
            _throughput_table(r, plan),
            _handover_table(r.load.handovers),
            _ledger_table(r.load.ledger),
            _many_table(r.many),
            _stateful.table(r.stateful),
            _common.format_table(["target", "goal", "value", ""], target_rows),
        ]
    )


def _throughput_table(r: Results, plan: Plan) -> str:
    n = _common.number
    rows = []
    labelled = [
        *((f"{label}, median of {plan.rounds}", r.load.steady[label]) for label in LABELS),
        (f"drivebayd, {plan.steady_s:g} s before the upgrades", r.load.before),
        (f"drivebayd, during {len(r.load.handovers)} upgrades", r.load.during),
    ]
    for label, f in labelled:
        cpu = [f.cpu_us.get(role) for role in ("here", "daemon", "driver")]
        total = sum(c for c in cpu if c is not None) if f.cpu_us else None
        ratio = f"{r.bare.calls_per_s / f.calls_per_s:.2f}x"
        rows.append(
            [label, n(f.calls_per_s), n(f.p50_ms), n(f.p99_ms), ratio, *map(n, cpu), n(total)]
        )
    in_flight = plan.resources * plan.callers_per_resource
    headers = [
        f"{plan.resources} resources, {in_flight} calls in flight",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "bare/this",
        "CPU µs/call: here",
        "drivebayd",
        "driver",
        "total",
    ]
    return _common.format_table(headers, rows)


def _handover_table(found: list[Handover]) -> str:
    n = _common.number
    rows = [
        [
            h.version,
            n(h.drop_to_running_ms),
            n(h.switch_ms),
            n(h.running_to_switched_ms),
            n(h.drop_to_alone_ms),
            h.old_exit,
        ]
        for h in found
    ]
    headers = [
        "upgrade to",
        "drop->RUNNING ms",
        "switch ms (log)",
        "RUNNING->switched ms",
        "drop->alone ms",
        "old process",
    ]
    return _common.format_table(headers, rows)


def _ledger_table(c: LedgerCheck) -> str:
    rows = [[key, f"{value:,}"] for key, value in asdict(c).items() if key != "per_version"]
    rows += [[f"ran on {version}", f"{count:,}"] for version, count in c.per_version.items()]
    return _common.format_table(["drivebayd's ledger, whole run", "operations"], rows)


def _many_table(m: Many) -> str:
    per_resource_kb = (m.rss_after_mb - m.rss_before_mb) * 1e3 / m.resources
    rows = [
        ["add time, s", f"{m.add_s:.2f}"],
        ["adds/s", _common.number(m.resources / m.add_s)],
        ["drivebayd RSS before, MB", f"{m.rss_before_mb:.1f}"],
        ["drivebayd RSS after, MB", f"{m.rss_after_mb:.1f}"],
        ["drivebayd RSS per resource, kB", f"{per_resource_kb:.2f}"],
        ["driver process RSS after, MB", f"{m.driver_rss_mb:.1f}"],
        ["random resources answering as themselves", f"{m.checked}/{CHECKED}"],
    ]
    return _common.format_table([f"{m.resources:,} resources", ""], rows)


def as_json(r: Results, quick: bool, metrics: bool) -> dict[str, Any]:
    switches = sorted(h.switch_ms for h in r.load.handovers)
    healthy = sorted(h.running_to_switched_ms for h in r.load.handovers)
    figures = {
        "kernel_calls_per_s": r.daemon.calls_per_s,
        "bare_rpc_calls_per_s": r.bare.calls_per_s,
        "in_process_kernel_calls_per_s": r.in_process.calls_per_s,
        "upgrade_calls_per_s": r.load.during.calls_per_s,
        "kernel_overhead_ratio": r.bare.calls_per_s / r.daemon.calls_per_s,
        "in_process_overhead_ratio": r.bare.calls_per_s / r.in_process.calls_per_s,
        "kernel_p50_ms": r.daemon.p50_ms,
        "kernel_p99_ms": r.daemon.p99_ms,
        "bare_rpc_p50_ms": r.bare.p50_ms,
        "bare_rpc_p99_ms": r.bare.p99_ms,
        "in_process_p50_ms": r.in_process.p50_ms,
        "in_process_p99_ms": r.in_process.p99_ms,
        "steady_p50_ms": r.load.before.p50_ms,
        "steady_p99_ms": r.load.before.p99_ms,
        "upgrade_p50_ms": r.load.during.p50_ms,
        "upgrade_p99_ms": r.load.during.p99_ms,
        "switch_ms": statistics.median(switches),
        "switch_ms_max": switches[-1],
        "healthy_to_switched_ms": statistics.median(healthy),
        "healthy_to_switched_ms_max": healthy[-1],
        "rss_10k_resources_mb": r.many.rss_after_mb,
        "rss_0_resources_mb": r.many.rss_before_mb,
        "add_10k_s": r.many.add_s,
    }
    result: dict[str, Any] = {key: round(value, 3) for key, value in figures.items()}
    result["cpu_us_per_call"] = {
        label: {role: round(us, 2) for role, us in f.cpu_us.items()}
        for label, f in r.load.steady.items()
    }
    result["per_window_calls_per_s"] = {
        label: [round(rate) for rate in f.per_window] for label, f in r.load.steady.items()
    }
    result.update(asdict(r.load.ledger))
    result.update(_stateful.as_json(r.stateful))
    result["upgrades"] = len(r.load.handovers)
    result["handovers"] = [asdict(h) for h in r.load.handovers]
    result["targets"] = {t: {"goal": g, "value": v, "met": met} for t, g, v, met in targets(r)}
    result["mode"] = "quick" if quick else "full"
    result["metrics"] = "on" if metrics else "off"
    return result


# -- main --------------------------------------------------------------------------------------


async def run_all(plan: Plan, root: Path, envs_dir: Path) -> Results:
    load = await under_load(plan, root, envs_dir)
    _common.progress(f"upgrade: {plan.many:,} resources ...")
    many = await many_resources(plan, root / "many", envs_dir)
    stateful = await _stateful.run(root / "stateful", envs_dir, plan.stateful)
    return Results(load, many, stateful)


def _footer(info: dict[str, Any], plan: Plan, quick: bool, took: float) -> str:
    return (
        f"\n{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_1m_before']} before, {info['loadavg_1m']} after, "
        f"{'quick' if quick else 'full'} run, metrics {'on' if plan.metrics else 'off'}, "
        f"{took:.0f} s"
    )


def main(argv: list[str] | None = None) -> None:
    import uvloop

    parser = _common.bench_parser(__doc__.split("\n\n")[0], "shorter windows, 3 upgrades")
    parser.add_argument(
        "--metrics",
        choices=["on", "off"],
        default="on",
        help="count calls for /metrics in the daemons (metrics.enabled; default: on)",
    )
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="in-process kernel: %(message)s")
    plan = QUICK if options.quick else FULL
    plan = dataclasses.replace(plan, metrics=options.metrics == "on")
    options.envs_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = _common.machine()["loadavg_1m"]
    with tempfile.TemporaryDirectory(prefix="drivebay-upgrade-") as tmp:
        results = uvloop.run(run_all(plan, Path(tmp), options.envs_dir))
    info = {**_common.machine(), "loadavg_1m_before": load_before}
    print(report(results, plan))
    print(_footer(info, plan, options.quick, time.monotonic() - started))
    if options.json:
        _common.print_json_last({**as_json(results, options.quick, plan.metrics), "machine": info})


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # every process is reaped by then; spare the traceback
        sys.exit(130)
