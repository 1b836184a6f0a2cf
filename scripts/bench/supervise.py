"""Supervision benchmark: drivebay against supervisord 4.x, side by side (issue 4).

Run with the project venv, from the repository root, after compiling the
project's bytecode (``scripts/test`` does the same; with
PYTHONDONTWRITEBYTECODE set, every drivebayctl would otherwise compile its
imports)::

    .venv/bin/python -m compileall -q kernel sandbox protocol
    .venv/bin/python scripts/bench/supervise.py [--quick] [--json]

Both daemons run at once, with default settings and as many children each
(50; 10 with ``--quick``):

- drivebayd with minimal bundles (driver ``fixtures/supervise/idle.py``: a
  health check, nothing else), each its own child process; they share one
  virtualenv, kept between runs in ``--envs-dir``;
- supervisord with programs running ``fixtures/supervise/child.py`` on the same
  interpreter: it sets its parent-death signal, as a driver does, then sleeps.
  supervisord cannot tell when a child is ready, so a child doing more at
  start would not change supervisord's figures.

Figures:

(a) restart to RUNNING: from ``kill -9`` of a child until the daemon reports
    a new child RUNNING, two ways. *Polled*: the daemon is asked every 10 ms
    (drivebay ``status`` on its control socket, supervisord ``getProcessInfo``
    on its XML-RPC socket). *Idle*: nobody asks; the time is that of the
    daemon's own "entered RUNNING" log line, then one request confirms it.
    The two differ for supervisord only: its main loop wakes once a second or
    on a request, so asking it often makes it restart sooner than it does on
    its own. Each kill hits a different child (drivebay gives up after 5
    restarts of one driver within 60 s), one that has run for more than
    ``startsecs`` (1 s, in both daemons): 1.5 s pass after each RUNNING.
(b) status: wall time of ``drivebayctl status`` and ``supervisorctl status``
    (started and waited here, interleaved), with ``python -c pass`` as the
    floor of any Python command; and the status request alone, in process.

Every process started here is reaped, also on Ctrl-C. The daemons run in
their own process groups and are stopped with SIGTERM (SIGKILL past 60 s);
this script is the subreaper of their children, and reaps any orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import _common
from supervisor.xmlrpc import SupervisorTransport

from drivebay.client import AsyncClient

BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "supervise"
VERSION = "1.0.0"
POLL_S = 0.01
GAP_S = 1.5  # after RUNNING, before the next kill: past both daemons' startsecs
SETTLE_S = 3.0  # after every child is RUNNING, before measuring: the start's tail
REQUESTS = 50  # in-process status requests timed per daemon
PR_SET_CHILD_SUBREAPER = 36
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    programs: int  # children per daemon
    kills: int  # per daemon and way (polled, idle)
    status_runs: int  # per command


FULL = Plan(programs=50, kills=10, status_runs=20)
QUICK = Plan(programs=10, kills=3, status_runs=5)


class Fleet(Protocol):
    """One daemon with its children, as the measurements see it."""

    label: str
    names: list[str]
    log_path: Path

    def running_pid(self, name: str) -> int | None:
        """The child's pid if the daemon reports it RUNNING, else None."""

    def running_line(self, name: str) -> str:
        """What the daemon's log line says when ``name`` enters RUNNING."""

    def status_argv(self) -> list[str]: ...

    def status_request(self) -> int:
        """One status request of all children, in process; how many rows."""


# -- helpers ---------------------------------------------------------------------------


def wait_until(check: Callable[[], T | None], deadline: float, what: str, poll: float) -> T:
    """Call ``check`` every ``poll`` s until it returns something; TimeoutError past
    ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {deadline:g} s")
        time.sleep(poll)


@contextlib.contextmanager
def daemon_process(argv: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start a daemon (output to ``log_path``, own process group); always stop and reap it."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def reaping_orphans(grace: float = 10.0) -> Iterator[None]:
    """Adopt the orphans of our descendants (subreaper) and reap them at the end.

    Children of a daemon that died outright die of their parent-death signal;
    as their new parent we wait for them.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        end = time.monotonic() + grace
        while time.monotonic() < end:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)


def log_offset(path: Path) -> int:
    return path.stat().st_size


def wait_log_line(path: Path, offset: int, needle: str, deadline: float) -> str:
    """The first complete line after byte ``offset`` of ``path`` containing ``needle``."""

    def find() -> str | None:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        complete = text[: text.rfind("\n") + 1]
        return next((line for line in complete.splitlines() if needle in line), None)

    return wait_until(find, deadline, f"log line {needle!r}", POLL_S)


def log_time(line: str) -> float:
    """The wall-clock time of a log line starting ``2026-11-25 09:07:06,949``."""
    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def wall_ms(argv: list[str], rows: int) -> float:
    """Run ``argv`` once; its wall time in ms. RuntimeError unless it succeeds
    and prints ``rows`` lines."""
    start = time.perf_counter()
    result = subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
    )
    elapsed = (time.perf_counter() - start) * 1e3
    lines = len(result.stdout.splitlines())
    if result.returncode != 0 or (rows and lines != rows):
        raise RuntimeError(
            f"{argv[0]} exited {result.returncode} with {lines} lines: {result.stderr[-500:]}"
        )
    return elapsed


# -- drivebay --------------------------------------------------------------------------


class Drivebay:
    """drivebayd and its drivers, asked over the control socket."""

    label = "drivebay"

    def __init__(
        self, root: Path, names: list[str], runner: asyncio.Runner, client: AsyncClient
    ) -> None:
        self.names = names
        self.log_path = root / "drivebayd.log"
        self.socket = root / "ctl.sock"
        self._runner = runner
        self._client = client

    def rows(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        request = self._client.request("status", {"names": names} if names else {})
        rows: list[dict[str, Any]] = self._runner.run(request)
        return rows

    def running_pid(self, name: str) -> int | None:
        (row,) = self.rows([name])
        return row["pid"] if row["state"] == "RUNNING" else None

    def running_line(self, name: str) -> str:
        return f"{name}@{VERSION} entered RUNNING"

    def status_argv(self) -> list[str]:
        return [str(BIN / "drivebayctl"), "-s", str(self.socket), "status"]

    def status_request(self) -> int:
        return len(self.rows())

    def count_running(self) -> int | None:
        rows = self.rows()
        broken = [r for r in rows if r["state"] in ("FATAL", "FAILED", "INVALID", "BLOCKED")]
        if broken:
            raise RuntimeError(f"drivebay: {broken[0]['name']} {broken[0]['state']}: {broken[0]}")
        running = sum(row["state"] == "RUNNING" for row in rows)
        return running if running == len(self.names) else None


def write_bundle(root: Path, name: str) -> Path:
    bundle = root / f"{name}-{VERSION}"
    (bundle / "src").mkdir(parents=True)
    (bundle / "driver.yaml").write_text(
        f"name: {name}\nversion: {VERSION}\ncategory: other\n"
        f"description: {name}, an idle driver for the supervision benchmark\n"
        "entrypoint: idle:IdleDriver\n"
    )
    (bundle / "LICENSE").write_text("Apache-2.0\n")
    (bundle / "src" / "idle.py").write_text((FIXTURES / "idle.py").read_text())
    return bundle


async def _connect(path: Path, process: subprocess.Popen[bytes]) -> AsyncClient:
    end = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"drivebayd exited {process.returncode}; see its log")
        try:
            return await AsyncClient.connect(str(path))
        except OSError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def drivebay(root: Path, envs_dir: Path, names: list[str]) -> Iterator[Drivebay]:
    """drivebayd with default settings and one idle bundle per name, all RUNNING."""
    root.mkdir()
    drivers, staging = root / "drivers", root / "staging"
    drivers.mkdir()
    staging.mkdir()
    config = root / "drivebay.yaml"
    config.write_text(
        f"state_dir: {root / 'state'}\ndrivers_dir: {drivers}\n"
        f"socket: {root / 'ctl.sock'}\nenvs_dir: {envs_dir}\n"
    )
    argv = [str(BIN / "drivebayd"), "--config", str(config)]
    with (
        daemon_process(argv, root / "drivebayd.log") as process,
        asyncio.Runner() as runner,
    ):
        client = runner.run(_connect(root / "ctl.sock", process))
        try:
            for name in names:  # a finished bundle is moved in at once, as operators should
                os.rename(write_bundle(staging, name), drivers / f"{name}-{VERSION}")
            fleet = Drivebay(root, names, runner, client)
            wait_until(fleet.count_running, 300, "drivebay: every driver RUNNING", 0.2)
            yield fleet
        finally:
            runner.run(client.close())


# -- supervisord -----------------------------------------------------------------------


class Supervisord:
    """supervisord and its programs, asked over its XML-RPC socket."""

    label = "supervisord"

    def __init__(self, root: Path, names: list[str]) -> None:
        self.names = names
        self.log_path = root / "supervisord.log"
        self.config = root / "supervisord.conf"
        self._transport = SupervisorTransport(None, None, f"unix://{root / 'supervisor.sock'}")
        self.rpc: Any = xmlrpc.client.ServerProxy("http://localhost", self._transport).supervisor

    def running_pid(self, name: str) -> int | None:
        info = self.rpc.getProcessInfo(name)
        return info["pid"] if info["statename"] == "RUNNING" else None

    def running_line(self, name: str) -> str:
        return f"success: {name} entered RUNNING state"

    def status_argv(self) -> list[str]:
        return [str(BIN / "supervisorctl"), "-c", str(self.config), "status"]

    def status_request(self) -> int:
        return len(self.rpc.getAllProcessInfo())

    def count_running(self) -> int | None:
        try:
            infos = self.rpc.getAllProcessInfo()
        except OSError:  # not listening yet: forget the half-made connection
            self._transport.close()
            return None
        running = sum(info["statename"] == "RUNNING" for info in infos)
        return running if running == len(self.names) else None


def supervisord_config(root: Path, names: list[str]) -> str:
    """A config with supervisord's defaults; only files and programs are named."""
    sections = [
        f"[unix_http_server]\nfile={root / 'supervisor.sock'}\n",
        f"[supervisord]\nlogfile={root / 'supervisord.log'}\n"
        f"pidfile={root / 'supervisord.pid'}\nchildlogdir={root / 'logs'}\n",
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
        f"[supervisorctl]\nserverurl=unix://{root / 'supervisor.sock'}\n",
    ]
    command = f"{sys.executable} -I {FIXTURES / 'child.py'}"
    sections += [f"[program:{name}]\ncommand={command}\n" for name in names]
    return "\n".join(sections)


@contextlib.contextmanager
def supervisord(root: Path, names: list[str]) -> Iterator[Supervisord]:
    """supervisord (foreground) with one program per name, all RUNNING."""
    root.mkdir()
    (root / "logs").mkdir()
    fleet = Supervisord(root, names)
    fleet.config.write_text(supervisord_config(root, names))
    argv = [str(BIN / "supervisord"), "-n", "-c", str(fleet.config)]
    with daemon_process(argv, root / "supervisord.out") as process:

        def check() -> int | None:
            if process.poll() is not None:
                raise RuntimeError(f"supervisord exited {process.returncode}; see its log")
            return fleet.count_running()

        wait_until(check, 120, "supervisord: every program RUNNING", 0.2)
        yield fleet


# -- measuring -------------------------------------------------------------------------


def kill_to_running_ms(fleet: Fleet, name: str, polled: bool) -> float:
    """Kill ``name``'s child; ms until ``fleet`` reports a new child RUNNING."""
    old = fleet.running_pid(name)
    if old is None:
        raise RuntimeError(f"{fleet.label}: {name} is not RUNNING before the kill")
    offset = log_offset(fleet.log_path)
    killed_at, start = time.time(), time.perf_counter()
    os.kill(old, signal.SIGKILL)
    what = f"{fleet.label}: {name} RUNNING again"
    if polled:
        wait_until(lambda: (pid := fleet.running_pid(name)) != old and pid, 30, what, POLL_S)
        return (time.perf_counter() - start) * 1e3
    line = wait_log_line(fleet.log_path, offset, fleet.running_line(name), 30)
    new = fleet.running_pid(name)
    if new is None or new == old:
        raise RuntimeError(f"{what}: logged but reported as pid {new}")
    return (log_time(line) - killed_at) * 1e3


def restart_samples(fleets: list[Fleet], kills: int) -> dict[str, list[float]]:
    """``kills`` samples per fleet and way, interleaved; each kill on a fresh child."""
    samples: dict[str, list[float]] = {}
    victims = {fleet.label: iter(fleet.names) for fleet in fleets}
    for number in range(kills):
        for way, polled in (("polled", True), ("idle", False)):
            for fleet in fleets:
                _common.progress(f"restart {number + 1}/{kills}: {fleet.label}, {way}")
                name = next(victims[fleet.label])
                sample = kill_to_running_ms(fleet, name, polled)
                samples.setdefault(f"{fleet.label} {way}", []).append(sample)
                time.sleep(GAP_S)
    return samples


def status_samples(fleets: list[Fleet], runs: int, programs: int) -> dict[str, list[float]]:
    """Wall times of each status command (and of the Python floor), interleaved,
    after two warm-up runs of each; then in-process request times."""
    commands = {fleet.label: (fleet.status_argv(), programs) for fleet in fleets}
    commands["python"] = ([sys.executable, "-c", "pass"], 0)  # as console scripts start it
    samples: dict[str, list[float]] = {label: [] for label in commands}
    for run in range(2 + runs):
        for label, (argv, rows) in commands.items():
            elapsed = wall_ms(argv, rows)
            if run >= 2:
                samples[label].append(elapsed)
    for fleet in fleets:
        samples[f"{fleet.label} request"] = request_ms(fleet, programs)
    return samples


def request_ms(fleet: Fleet, programs: int) -> list[float]:
    times = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        rows = fleet.status_request()
        times.append((time.perf_counter() - start) * 1e3)
        if rows != programs:
            raise RuntimeError(f"{fleet.label}: status has {rows} rows, not {programs}")
    return times


def run_all(plan: Plan, envs_dir: Path) -> dict[str, list[float]]:
    if 2 * plan.kills > plan.programs:
        raise ValueError("each kill needs a child of its own")
    names = [f"idle-{number:02d}" for number in range(plan.programs)]
    envs_dir.mkdir(parents=True, exist_ok=True)
    with (
        reaping_orphans(),
        tempfile.TemporaryDirectory(prefix="drivebay-supervise-") as tmp,
    ):
        _common.progress(f"starting drivebayd and supervisord, {plan.programs} children each")
        with (
            drivebay(Path(tmp) / "drivebay", envs_dir, names) as ours,
            supervisord(Path(tmp) / "supervisord", names) as theirs,
        ):
            fleets: list[Fleet] = [ours, theirs]
            time.sleep(SETTLE_S)
            _common.progress("status ...")
            samples = status_samples(fleets, plan.status_runs, plan.programs)
            samples.update(restart_samples(fleets, plan.kills))
            return samples


# -- reporting -------------------------------------------------------------------------


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {key: statistics.median(values) for key, values in samples.items()}


def figures(samples: dict[str, list[float]], plan: Plan) -> dict[str, Any]:
    """The flat result: medians in ms, the ratios (how many times drivebay is faster)."""
    m = medians(samples)
    result: dict[str, Any] = {
        "restart_to_running_ms": m["drivebay polled"],
        "restart_to_running_idle_ms": m["drivebay idle"],
        "supervisord_restart_to_running_ms": m["supervisord idle"],
        "supervisord_restart_to_running_polled_ms": m["supervisord polled"],
        "status_ms": m["drivebay"],
        "supervisorctl_status_ms": m["supervisord"],
        "python_startup_ms": m["python"],
        "status_request_ms": m["drivebay request"],
        "supervisord_status_request_ms": m["supervisord request"],
    }
    result["restart_ratio"] = m["supervisord idle"] / m["drivebay polled"]
    result["restart_ratio_polled"] = m["supervisord polled"] / m["drivebay polled"]
    result["restart_ratio_idle"] = m["supervisord idle"] / m["drivebay idle"]
    result["status_ratio"] = m["supervisord"] / m["drivebay"]
    result["status_request_ratio"] = m["supervisord request"] / m["drivebay request"]
    result = {key: round(value, 2) for key, value in result.items()}
    result["samples_ms"] = {key: [round(v, 1) for v in values] for key, values in samples.items()}
    result["targets"] = {
        label: {"value": round(value, 2), "goal": f"{comparison} {goal:g}", "met": met}
        for label, value, comparison, goal, met in targets(result, plan)
    }
    return result


def targets(result: dict[str, Any], plan: Plan) -> list[tuple[str, float, str, float, bool]]:
    """(label, value, comparison, goal, met) for each target of the issue."""
    rows = [
        ("restart: supervisord idle / drivebay polled", result["restart_ratio"], ">=", 10.0),
        ("restart: both polled", result["restart_ratio_polled"], ">=", 10.0),
        ("restart: both idle", result["restart_ratio_idle"], ">=", 10.0),
        ("status: supervisorctl / drivebayctl", result["status_ratio"], ">", 1.0),
        (f"drivebayctl status ms, {plan.programs} drivers", result["status_ms"], "<", 60.0),
    ]
    met = {">=": float.__ge__, ">": float.__gt__, "<": float.__lt__}
    return [(*row, met[row[2]](float(row[1]), row[3])) for row in rows]


def report(result: dict[str, Any], plan: Plan) -> str:
    ms = _common.number
    n, kills, runs = plan.programs, plan.kills, plan.status_runs
    rows = [
        [
            f"restart to RUNNING, idle daemons, ms (median of {kills})",
            ms(result["restart_to_running_idle_ms"]),
            ms(result["supervisord_restart_to_running_ms"]),
            f"{result['restart_ratio_idle']:.1f}x",
        ],
        [
            f"restart to RUNNING, polled every 10 ms, ms (median of {kills})",
            ms(result["restart_to_running_ms"]),
            ms(result["supervisord_restart_to_running_polled_ms"]),
            f"{result['restart_ratio_polled']:.1f}x",
        ],
        [
            f"status command wall time, {n} children, ms (median of {runs})",
            ms(result["status_ms"]),
            ms(result["supervisorctl_status_ms"]),
            f"{result['status_ratio']:.2f}x",
        ],
        [
            f"status request in process, {n} children, ms (median of {REQUESTS})",
            ms(result["status_request_ms"]),
            ms(result["supervisord_status_request_ms"]),
            f"{result['status_request_ratio']:.1f}x",
        ],
        ["python -c pass, ms (floor of a Python command)", ms(result["python_startup_ms"])],
    ]
    headers = ["", "drivebay", "supervisord", "drivebay faster by"]
    rows = [row + [""] * (len(headers) - len(row)) for row in rows]
    target_rows = [
        [label, f"{comparison} {goal:g}", f"{value:.2f}", "met" if met else "NOT met"]
        for label, value, comparison, goal, met in targets(result, plan)
    ]
    return "\n\n".join(
        [
            _common.format_table(headers, rows),
            _common.format_table(["target", "goal", "value", ""], target_rows),
        ]
    )


def _footer(info: dict[str, Any], quick: bool, took: float) -> str:
    return (
        f"\n{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_1m']}, {'quick' if quick else 'full'} run, {took:.0f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = _common.bench_parser(__doc__.split("\n\n")[0], "10 children, fewer samples")
    options = parser.parse_args(argv)
    plan = QUICK if options.quick else FULL
    started = time.monotonic()
    load_before = _common.machine()["loadavg_1m"]
    result = figures(run_all(plan, options.envs_dir), plan)
    info = {**_common.machine(), "loadavg_1m_before": load_before}
    print(report(result, plan))
    print(_footer(info, options.quick, time.monotonic() - started))
    if options.json:
        _common.print_json_last(
            {**result, "mode": "quick" if options.quick else "full", "machine": info}
        )


if __name__ == "__main__":
    main()
