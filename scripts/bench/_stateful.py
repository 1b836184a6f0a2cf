"""The stateful case of ``upgrade.py``: tcp-forward hands its sockets to each new version.

One drivebayd runs copies of ``drivers/tcp-forward`` (``limits.open_files``
raised so that 1,000 connections fit in one driver process, twice over
while both versions hold them). First without state: a copy whose class
has no ``handoff``/``takeover`` moves its 100 idle resources by detach and
attach (``no state`` upgrades). Then the real bundle: 100 resources, each
relaying 10 client connections to an echo server in this process, are
upgraded again and again, every resource's listener and connections handed
to the next version.

Load, both phases paced so that the machine is not saturated: each client
sends a 512-byte message and waits for its echo before the next one (the
round trip is the latency of bytes through the forwarder; each echo is
compared with what was sent), and one caller per resource calls ``stats``
(the latency of operations). Steady state is a window before the first
stateful upgrade; "during" runs from the first drop to the moment status
shows only the last version. The handover time is the daemon's own figure
(``all N resources switched in X ms``) of each upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
import yaml

from drivebay.client import AsyncClient

BIN = Path(sys.executable).parent
BUNDLE = Path(__file__).resolve().parents[2] / "drivers" / "tcp-forward"
DRIVER = "tcp-forward"
MESSAGE = 512
POLL_S = 0.01
STATELESS = '''"""tcp-forward without a state to hand over: moved by detach and attach."""

from tcp_forward import TcpForward


class Stateless(TcpForward):
    handoff = None
    takeover = None
    handoff_aborted = None
'''
TRACED = '''"""tcp-forward with its hooks' start and end on the shared monotonic clock."""

import time

from tcp_forward import TcpForward


class Traced(TcpForward):
    async def handoff(self):
        start, cpu = time.monotonic(), time.process_time()
        state = await super().handoff()
        state["traced"] = [start, time.monotonic(), cpu, time.process_time()]
        return state

    async def takeover(self, state, from_version):
        handed = state.pop("traced", None) or [0.0] * 4
        start, cpu = time.monotonic(), time.process_time()
        await super().takeover(state, from_version)
        self._traced = [*handed[:2], start, time.monotonic(), handed[2], handed[3]]
        self._traced += [cpu, time.process_time()]

    async def traced(self):
        """[old's handoff start, end, this takeover's start, end, then the
        process CPU time at each of the four] of the last move."""
        return getattr(self, "_traced", [])
'''


@dataclass(frozen=True)
class StatefulPlan:
    resources: int = 100
    per_resource: int = 10  # client connections relayed by each resource
    no_state_upgrades: int = 3
    upgrades: int = 5
    warmup_s: float = 1.0
    steady_s: float = 5.0
    message_every_s: float = 0.5  # per client: 2,000 round trips/s over 1,000 clients
    call_every_s: float = 0.1  # per resource: 1,000 stats calls/s over 100 resources

    @property
    def open_files(self) -> int:
        """Two sockets a connection, a listener a resource, room for the runtime."""
        return 2 * self.resources * (self.per_resource * 2 + 1) + 256


FULL = StatefulPlan()
QUICK = StatefulPlan(no_state_upgrades=1, upgrades=2, steady_s=2.0)


def forward_bundle(
    root: Path, version: str, open_files: int, stateless: bool, traced: bool = False
) -> None:
    """Write a copy of tcp-forward as ``version`` beside the drivers dir, then move it in
    (``traced``: its hooks stamped, for ``handover_phases.py``)."""
    staged = root / "staging" / f"{DRIVER}-{version}"
    shutil.copytree(BUNDLE, staged, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = yaml.safe_load((staged / "driver.yaml").read_text())
    manifest["version"] = version
    manifest["limits"] = {**manifest.get("limits", {}), "open_files": open_files}
    if stateless:
        (staged / "src" / "stateless_forward.py").write_text(STATELESS)
        manifest["entrypoint"] = "stateless_forward:Stateless"
    elif traced:
        (staged / "src" / "traced_forward.py").write_text(TRACED)
        manifest["entrypoint"] = "traced_forward:Traced"
    (staged / "driver.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (root / "drivers").mkdir(parents=True, exist_ok=True)
    os.rename(staged, root / "drivers" / staged.name)


# -- the daemon --------------------------------------------------------------------------


class Daemon:
    """drivebayd in ``root`` with its admin connection."""

    def __init__(self, root: Path, process: asyncio.subprocess.Process, admin: AsyncClient):
        self.root, self.process, self.admin = root, process, admin
        self.log_path = root / "drivebayd.log"

    async def wait_only(self, version: str, deadline: float = 120) -> None:
        """Until status shows ``version`` RUNNING and no other version of tcp-forward."""
        async with asyncio.timeout(deadline):
            while True:
                rows = [r for r in await self.admin.request("status") if r["name"] == DRIVER]
                states = [(r["version"], r["state"]) for r in rows]
                if any(state in ("FAILED", "FATAL", "INVALID", "BLOCKED") for _, state in states):
                    raise RuntimeError(f"drivebayd: {DRIVER}: {states}; see {self.log_path}")
                if states == [(version, "RUNNING")]:
                    return
                await asyncio.sleep(POLL_S)

    def switch_ms(self, version: str) -> tuple[int, float]:
        """(resources moved, ms) of the handover to ``version``, from the daemon's log."""
        name = re.escape(f"{DRIVER}@{version}")
        found = re.search(
            rf"{name}: all (\d+) resources switched in ([\d.]+) ms",
            self.log_path.read_text(errors="replace"),
        )
        if found is None:
            raise RuntimeError(f"the daemon's log has no switch line for {DRIVER}@{version}")
        return int(found[1]), float(found[2])


def _write_config(root: Path, envs_dir: Path) -> None:
    (root / "drivers").mkdir(parents=True)
    settings = {
        "state_dir": str(root / "state"),
        "drivers_dir": str(root / "drivers"),
        "socket": str(root / "ctl.sock"),
        "envs_dir": str(envs_dir),
        "settle_s": 0.2,
    }
    (root / "drivebay.yaml").write_text(json.dumps(settings))  # JSON is YAML


@contextlib.asynccontextmanager
async def drivebayd(root: Path, envs_dir: Path) -> AsyncIterator[Daemon]:
    """A daemon with nothing in its drivers dir yet; always stopped and reaped."""
    _write_config(root, envs_dir)
    log_fd = os.open(root / "drivebayd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            str(BIN / "drivebayd"),
            "--config",
            str(root / "drivebay.yaml"),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    admin: AsyncClient | None = None
    try:
        async with asyncio.timeout(30):
            while admin is None:
                if process.returncode is not None:
                    raise RuntimeError(f"drivebayd exited {process.returncode}; see its log")
                with contextlib.suppress(OSError):
                    admin = await AsyncClient.connect(str(root / "ctl.sock"))
                if admin is None:
                    await asyncio.sleep(POLL_S)
        yield Daemon(root, process, admin)
    finally:
        if admin is not None:
            await admin.close()
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


# -- load ------------------------------------------------------------------------------------


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close when the client has finished


@dataclass
class Load:
    """Clients and callers; every latency with the time it was taken at."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_rtt: list[tuple[float, float]] = field(default_factory=list)  # (started, seconds)
    calls: list[tuple[float, float]] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    wrong: int = 0  # echoes that differ from what was sent
    errors: list[str] = field(default_factory=list)

    async def client(self, port: int, number: int, every_s: float) -> None:
        clock = time.perf_counter
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for seq in itertools.count():
                if self.stop.is_set():
                    break
                message = f"{number:08}:{seq:012}:".encode().ljust(MESSAGE, b".")
                started = clock()
                writer.write(message)
                self.sent += len(message)
                echoed = await reader.readexactly(len(message))
                self.bytes_rtt.append((started, clock() - started))
                self.received += len(echoed)
                self.wrong += echoed != message
                await asyncio.sleep(every_s)
            writer.write_eof()
            if await reader.read() != b"":
                self.wrong += 1
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.errors.append(f"client {number}: {exc!r}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def caller(self, client: AsyncClient, resource: str, every_s: float) -> None:
        clock = time.perf_counter
        while not self.stop.is_set():
            started = clock()
            try:
                await client.call(resource, "stats")
            except Exception as exc:
                self.errors.append(f"stats of {resource}: {exc!r}")
            self.calls.append((started, clock() - started))
            await asyncio.sleep(every_s)


def p99_ms(samples: list[tuple[float, float]], start: float, end: float) -> float:
    inside = sorted(seconds for began, seconds in samples if start <= began < end)
    if not inside:
        raise RuntimeError("no sample in the window")
    return _common.percentile(inside, 99) * 1e3


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stateful:
    resources: int
    connections: int
    no_state_switch_ms: list[float]
    switch_ms: list[float]  # each stateful upgrade: the daemon's handover time
    steady_call_p99_ms: float
    upgrade_call_p99_ms: float
    steady_bytes_p99_ms: float
    upgrade_bytes_p99_ms: float
    round_trips: int
    bytes_lost: int
    wrong: int
    errors: list[str]
    ports_kept: bool


async def run(root: Path, envs_dir: Path, plan: StatefulPlan) -> Stateful:
    resources = [f"f{n:03}" for n in range(plan.resources)]
    async with drivebayd(root, envs_dir) as daemon:
        loop = asyncio.get_running_loop()
        echo = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
        try:
            target = echo.sockets[0].getsockname()[1]
            no_state = await _no_state(daemon, root, resources, target, plan)
            return await _stateful(daemon, root, resources, no_state, plan)
        finally:
            echo.close()
            await echo.wait_closed()


async def _no_state(
    daemon: Daemon, root: Path, resources: list[str], target: int, plan: StatefulPlan
) -> list[float]:
    _common.progress(f"upgrade: stateful case, {plan.no_state_upgrades} upgrades without state ...")
    forward_bundle(root, "0.9.0", plan.open_files, stateless=True)
    await daemon.wait_only("0.9.0")
    assignments = ["listen_port=0", "target_host=127.0.0.1", f"target_port={target}"]
    await asyncio.gather(
        *(
            daemon.admin.request(
                "resource-add", {"id": r, "driver": DRIVER, "assignments": assignments}
            )
            for r in resources
        )
    )
    switches = []
    for n in range(1, plan.no_state_upgrades + 1):
        version = f"0.9.{n}"
        forward_bundle(root, version, plan.open_files, stateless=True)
        await daemon.wait_only(version)
        switches.append(daemon.switch_ms(version)[1])
    forward_bundle(root, "1.0.0", plan.open_files, stateless=False)  # attach: 0.9 cannot hand off
    await daemon.wait_only("1.0.0")
    return switches


async def _stateful(
    daemon: Daemon, root: Path, resources: list[str], no_state: list[float], plan: StatefulPlan
) -> Stateful:
    admin = daemon.admin
    ports = {r: (await admin.call(r, "stats"))["listen_port"] for r in resources}
    load = Load()
    callers = [await AsyncClient.connect(str(root / "ctl.sock")) for _ in range(4)]
    clock = time.perf_counter
    switches: list[float] = []
    try:
        async with asyncio.TaskGroup() as group:
            for n, resource in enumerate(resources):
                for k in range(plan.per_resource):
                    work = load.client(
                        ports[resource], n * plan.per_resource + k, plan.message_every_s
                    )
                    group.create_task(work)
                group.create_task(load.caller(callers[n % 4], resource, plan.call_every_s))
            _common.progress(
                f"upgrade: stateful case, {plan.resources * plan.per_resource:,} connections, "
                f"steady state ..."
            )
            await asyncio.sleep(plan.warmup_s)
            steady_start = clock()
            await asyncio.sleep(plan.steady_s)
            steady_end = clock()
            _common.progress(f"upgrade: stateful case, {plan.upgrades} upgrades ...")
            for n in range(1, plan.upgrades + 1):
                version = f"1.0.{n}"
                forward_bundle(root, version, plan.open_files, stateless=False)
                await daemon.wait_only(version)
                moved, ms = daemon.switch_ms(version)
                if moved != plan.resources:
                    raise RuntimeError(f"{version}: {moved} resources moved, not {plan.resources}")
                switches.append(ms)
            upgrades_end = clock()
            load.stop.set()
        kept = {r: (await admin.call(r, "stats"))["listen_port"] for r in resources} == ports
    finally:
        for client in callers:
            await client.close()
    if not load.bytes_rtt:
        raise RuntimeError(f"no round trip came back: {load.errors[:3]}")
    return Stateful(
        resources=plan.resources,
        connections=plan.resources * plan.per_resource,
        no_state_switch_ms=no_state,
        switch_ms=switches,
        steady_call_p99_ms=p99_ms(load.calls, steady_start, steady_end),
        upgrade_call_p99_ms=p99_ms(load.calls, steady_end, upgrades_end),
        steady_bytes_p99_ms=p99_ms(load.bytes_rtt, steady_start, steady_end),
        upgrade_bytes_p99_ms=p99_ms(load.bytes_rtt, steady_end, upgrades_end),
        round_trips=len(load.bytes_rtt),
        bytes_lost=load.sent - load.received,
        wrong=load.wrong,
        errors=load.errors[:10],
        ports_kept=kept,
    )


# -- report ------------------------------------------------------------------------------------


def table(s: Stateful) -> str:
    n = _common.number
    rows = [
        [
            "handover, 100 resources without state, ms (median)",
            n(statistics.median(s.no_state_switch_ms)),
        ],
        [
            f"handover, {s.connections:,} connections ({2 * s.connections:,} sockets), ms (median)",
            n(statistics.median(s.switch_ms)),
        ],
        ["  each upgrade, ms", " ".join(n(ms) for ms in s.switch_ms)],
        [
            "p99 of stats calls, steady / during upgrades, ms",
            f"{n(s.steady_call_p99_ms)} / {n(s.upgrade_call_p99_ms)}",
        ],
        [
            "p99 of a 512 B round trip through the forwarder, steady / during, ms",
            f"{n(s.steady_bytes_p99_ms)} / {n(s.upgrade_bytes_p99_ms)}",
        ],
        ["round trips checked", f"{s.round_trips:,}"],
        [
            "bytes lost / echoes wrong / connection errors",
            f"{s.bytes_lost} / {s.wrong} / {len(s.errors)}",
        ],
        ["every resource kept its port", "yes" if s.ports_kept else "NO"],
    ]
    return _common.format_table([f"stateful: tcp-forward, {s.resources} resources", ""], rows)


def targets(s: Stateful) -> list[tuple[str, str, str, bool]]:
    handover = statistics.median(s.switch_ms)
    steady = max(s.steady_call_p99_ms, s.steady_bytes_p99_ms)
    during = max(s.upgrade_call_p99_ms, s.upgrade_bytes_p99_ms)
    lost = s.bytes_lost + s.wrong + len(s.errors)
    return [
        (
            f"handover of {s.connections:,} connections, ms",
            "< 100",
            f"{handover:.1f}",
            handover < 100,
        ),
        (
            "stateful p99 during upgrades, ms",
            f"<= steady p99 + 20 = {steady + 20:.1f}",
            f"{during:.1f}",
            during <= steady + 20,
        ),
        ("stream bytes lost (+ wrong echoes, errors)", "0", str(lost), lost == 0 and s.ports_kept),
    ]


def as_json(s: Stateful) -> dict[str, Any]:
    figures = {
        "handover_1000_sockets_ms": statistics.median(s.switch_ms),
        "handover_1000_sockets_ms_max": max(s.switch_ms),
        "handover_no_state_ms": statistics.median(s.no_state_switch_ms),
        "stateful_steady_p99_ms": max(s.steady_call_p99_ms, s.steady_bytes_p99_ms),
        "stateful_upgrade_p99_ms": max(s.upgrade_call_p99_ms, s.upgrade_bytes_p99_ms),
        "stateful_call_p99_ms": s.upgrade_call_p99_ms,
        "stateful_steady_call_p99_ms": s.steady_call_p99_ms,
        "stateful_bytes_p99_ms": s.upgrade_bytes_p99_ms,
        "stateful_steady_bytes_p99_ms": s.steady_bytes_p99_ms,
    }
    result: dict[str, Any] = {key: round(value, 3) for key, value in figures.items()}
    result["stream_bytes_lost"] = s.bytes_lost
    result["stream_echoes_wrong"] = s.wrong
    result["stream_errors"] = s.errors
    result["stateful_ports_kept"] = s.ports_kept
    result["stateful_round_trips"] = s.round_trips
    result["stateful_upgrades"] = len(s.switch_ms)
    return result
