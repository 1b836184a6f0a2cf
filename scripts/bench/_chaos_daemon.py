"""The daemon under attack in ``chaos.py``: started, watched, killed, restarted.

``Chaosd`` is one drivebayd in a directory of its own (config, drop dir,
socket, log) with the chaos driver under several names, one per attack,
each with its own ledger file and a marker in its environment
(``CHAOS_MARK``) that every process a driver starts inherits: the processes
of an attack's drivers are found by that marker. drivebayd starts with a
soft descriptor limit of 1,024 (the common default, and systemd's), whatever
this process has. It can run inside a ``MountNamespace`` (``launcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common

from drivebay.client import AsyncClient

BIN = Path(sys.executable).parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "chaos" / "chaos.py"
SOFT_NOFILE = 1024
POLL_S = 0.002
STOP_S = 60.0


def _daemon_limits() -> None:  # runs in the child between fork and exec
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = SOFT_NOFILE if hard == resource.RLIM_INFINITY else min(SOFT_NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def write_bundle(root: Path, name: str, version: str = "1.0.0") -> Path:
    """The chaos driver as bundle ``name``, written beside ``root``'s drop dir."""
    bundle = root / "staging" / f"{name}-{version}"
    (bundle / "src").mkdir(parents=True)
    (bundle / "driver.yaml").write_text(
        json.dumps(
            {
                "name": name,
                "version": version,
                "category": "storage",
                "description": "the driver of the chaos benchmark",
                "entrypoint": "chaos:ChaosDriver",
                "properties": [
                    {"key": "colour", "type": "string", "required": False, "max_length": 40}
                ],
            }
        )
    )
    (bundle / "LICENSE").write_text("Apache-2.0\n")
    (bundle / "src" / "chaos.py").write_text(FIXTURE.read_text())
    return bundle


class Chaosd:
    """One drivebayd under ``root`` and its admin connection."""

    def __init__(
        self,
        root: Path,
        envs_dir: Path,
        mark: str,
        settings: dict[str, Any],
        launcher: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.mark = mark
        self.state = root / "state"
        self.drivers_dir = root / "drivers"
        self.socket = root / "ctl.sock"
        self.log_path = root / "drivebayd.log"
        self.config_path = root / "drivebay.yaml"
        self.launcher = list(launcher)
        self.settings: dict[str, Any] = {
            **settings,
            "state_dir": str(self.state),
            "drivers_dir": str(self.drivers_dir),
            "socket": str(self.socket),
            "envs_dir": str(envs_dir),
            "drivers": {},
        }
        self.process: asyncio.subprocess.Process | None = None
        self.admin = AsyncClient()
        root.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(exist_ok=True)
        self.drivers_dir.mkdir(exist_ok=True)

    # -- drivers -------------------------------------------------------------------------

    def ledger(self, driver: str) -> Path:
        return self.root / f"ledger-{driver}.txt"

    def marker(self, driver: str) -> str:
        return f"{self.mark}-{driver}"

    @property
    def markers(self) -> dict[str, str]:
        """marker -> driver, for every driver configured."""
        return {self.marker(name): name for name in self.settings["drivers"]}

    def add_driver(
        self, name: str, limits: dict[str, int] | None = None, drop: bool = True
    ) -> None:
        """Configure driver ``name`` (call before ``start``) and drop its bundle."""
        entry: dict[str, Any] = {
            "env": {"LEDGER_PATH": str(self.ledger(name)), "CHAOS_MARK": self.marker(name)}
        }
        if limits:
            entry["limits"] = limits
        self.settings["drivers"][name] = entry
        if drop:
            self.drop(name)

    def drop(self, name: str, version: str = "1.0.0") -> None:
        bundle = write_bundle(self.root, name, version)
        os.rename(bundle, self.drivers_dir / bundle.name)

    # -- the process ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        """Start drivebayd and connect the admin client (retried until it listens)."""
        self.config_path.write_text(json.dumps(self.settings))  # JSON is YAML
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.launcher,
                str(BIN / "drivebayd"),
                "--config",
                str(self.config_path),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,  # a Ctrl-C reaches only us; we stop it
                preexec_fn=_daemon_limits,
            )
        finally:
            os.close(log_fd)
        self.admin = await self.connect()

    async def connect(self) -> AsyncClient:
        async with asyncio.timeout(60):
            while True:
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"drivebayd exited {self.process.returncode}: {self.tail()}")
                try:
                    return await AsyncClient.connect(str(self.socket))
                except OSError:
                    await asyncio.sleep(0.01)

    async def connections(self, count: int) -> list[AsyncClient]:
        return [await self.connect() for _ in range(count)]

    def kill(self) -> None:
        """``kill -9`` of the daemon (reaped by ``wait_exit``)."""
        assert self.process is not None
        self.process.kill()

    async def wait_exit(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM, SIGKILL past STOP_S; always reaped, also when we are cancelled."""
        process = self.process
        if process is None:
            return
        await self.admin.close()
        await _common.stop_process(process, STOP_S)

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def rss_kb(self) -> int | None:
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def fds(self) -> int | None:
        with contextlib.suppress(OSError):
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        return None

    # -- asking it -----------------------------------------------------------------------

    async def row(self, client: AsyncClient, name: str) -> dict[str, Any] | None:
        rows = await client.request("status")
        return next((r for r in rows if r["name"] == name and r["version"]), None)

    async def wait_state(self, name: str, state: str, deadline: float = 120) -> dict[str, Any]:
        end = time.monotonic() + deadline
        while True:
            row = await self.row(self.admin, name)
            if row is not None and row["state"] == state:
                return row
            if time.monotonic() > end:
                raise RuntimeError(f"{name} not {state} within {deadline:g} s: {row}")
            await asyncio.sleep(0.02)


# -- processes by marker -----------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a driver that runs under an init of its own
    is frozen whole only so)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo += [int(child) for child in handle.read().split()]
    return found


def signal_tree(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def marked(marks: set[str]) -> dict[int, str]:
    """Live processes whose environment holds ``CHAOS_MARK=m`` for an ``m`` of
    ``marks``: pid -> m."""
    wanted = {f"CHAOS_MARK={m}".encode(): m for m in marks}
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item in wanted and alive(int(entry.name)):
                found[int(entry.name)] = wanted[item]
                break
    return found


async def processes_left(marks: set[str], grace: float) -> dict[int, str]:
    """The marked processes still alive after ``grace`` seconds (pid -> mark);
    they are then killed."""
    end = time.monotonic() + grace
    while (left := marked(marks)) and time.monotonic() < end:  # noqa: ASYNC110 -- no event
        await asyncio.sleep(0.05)  # tells us that other processes ended: they are looked for
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def reap_orphans(keep: set[int]) -> None:
    """Reap our children that are zombies, but for ``keep`` (those asyncio waits for):
    orphans of the daemon's drivers come to us, the subreaper."""
    children: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as handle:
            children.update(int(pid) for pid in handle.read().split())
    for pid in children - keep:
        if not alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
