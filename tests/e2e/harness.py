"""Run drivebayd and drivebayctl as an operator would, in a temporary state dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import children_of

BIN = Path(sys.executable).parent
FAST_CONFIG: dict[str, Any] = {
    "settle_s": 0.2,
    "timeouts": {
        "start_s": 30,
        "ping_interval_s": 1,
        "ping_timeout_s": 5,
        "drain_s": 3,
        "term_s": 3,
        "kill_s": 3,
        "health_interval_s": 5,
    },
}


def wait_for(check: Callable[[], Any], deadline: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something true; fail past the deadline."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {deadline}s")
        time.sleep(0.05)


class Daemon:
    """One drivebayd in ``root``, with its drivers dir, socket and log file."""

    def __init__(self, root: Path, envs_dir: Path, config: dict[str, Any] | None = None) -> None:
        self.root = root
        self.state = root / "state"
        self.drivers = root / "drivers"
        self.socket = root / "ctl.sock"
        self.log_path = root / "drivebayd.log"
        self.config_path = root / "drivebay.yaml"
        self.drivers.mkdir(parents=True, exist_ok=True)
        settings = {
            **FAST_CONFIG,
            "state_dir": str(self.state),
            "drivers_dir": str(self.drivers),
            "socket": str(self.socket),
            "envs_dir": str(envs_dir),
            **(config or {}),
        }
        self.config_path.write_text(yaml.safe_dump(settings))
        self.process: subprocess.Popen[bytes] | None = None

    def start(
        self, wait: bool = True, args: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        """Start drivebayd with extra ``args``, and ``env`` added to this environment."""
        log = open(self.log_path, "ab")  # noqa: SIM115 -- owned by the child's lifetime
        try:
            self.process = subprocess.Popen(
                [str(BIN / "drivebayd"), "--config", str(self.config_path), *args],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env} if env else None,
            )
        finally:
            log.close()
        if wait:
            wait_for(lambda: self.ctl("version").returncode == 0, what="daemon answering")

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "drivebayctl"), "-s", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def status(self) -> dict[str, dict[str, Any]]:
        result = self.ctl("status", "--json")
        assert result.returncode in (0, 3), result.stderr
        return {row["name"]: row for row in json.loads(result.stdout)}

    def wait_state(self, name: str, state: str, deadline: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            row = self.status().get(name)
            return row if row and row["state"] == state else None

        try:
            return wait_for(check, deadline, f"{name} {state}")
        except AssertionError:
            raise AssertionError(
                f"{name} never {state}; status={self.status()}\n{self.log()}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns its exit code."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def drop(self, bundle: Path) -> Path:
        """Move a finished bundle into the drivers dir at once (as operators should)."""
        target = self.drivers / bundle.name
        os.rename(bundle, target)
        return target


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def templates_of(daemon_pid: int) -> list[int]:
    """The daemon's template processes (``spawn: fork-server``, one per env)."""
    found = []
    for pid in children_of(daemon_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"fork_template" in handle.read():
                    found.append(pid)
        except OSError:
            continue
    return found
