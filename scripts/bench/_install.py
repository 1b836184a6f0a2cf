"""``install`` from a local repository to RUNNING, warm env cache, for ``distribution.py``.

A repository is written in ``work`` with ``drivebay repo`` (in this process)
and offered to a real drivebayd by its config (``repositories:``, the URL a
directory). A first install builds the driver's env (not measured); each
measured round publishes a new version of the same driver (same
dependencies: the env is warm) and times ``drivebayctl install NAME==V``
from the command's start until it returns, which is once the new version is
RUNNING. Returns the median of the rounds, in seconds.

Standalone: ``.venv/bin/python scripts/bench/_install.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
NAME = "bench-install"
SOURCE = """
class BenchInstallDriver:
    @classmethod
    async def health(cls):
        return {"ok": True}

    def __init__(self, resource_id, properties):
        self.resource_id = resource_id

    async def echo(self, text):
        return text
"""


def _bundle(root: Path, version: str) -> Path:
    manifest = (
        f"name: {NAME}\nversion: {version}\ncategory: storage\n"
        "entrypoint: bench_install:BenchInstallDriver\n"
    )
    path = root / f"{NAME}-{version}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("driver.yaml", manifest)
        archive.writestr("LICENSE", "Apache-2.0\n")
        archive.writestr("src/bench_install.py", SOURCE)
    return path


def _drivebay(*args: str) -> None:
    """A ``drivebay`` command in this process; its report goes to stderr."""
    from drivebay.author import cli

    with contextlib.redirect_stdout(sys.stderr):
        if cli.main(list(args)) != 0:
            raise RuntimeError(f"drivebay {' '.join(args)} failed")


def _publish(repo: Path, staging: Path, version: str) -> None:
    _drivebay("repo", "add", str(repo), str(_bundle(staging, version)))
    _drivebay("repo", "publish", str(repo))


def _ctl(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "drivebayctl"), "-s", str(socket), *args],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def install_to_running_s(work: Path, envs_dir: Path, rounds: int = 5) -> float:
    """Median seconds of ``drivebayctl install`` to RUNNING over ``rounds`` new versions."""
    repo, staging, state = work / "repo", work / "staging", work / "state"
    staging.mkdir(parents=True)
    _drivebay("repo", "init", str(repo), "--keys", str(work / "keys"))
    _publish(repo, staging, "1.0.0")
    socket = work / "ctl.sock"
    config = {
        "state_dir": str(state),
        "socket": str(socket),
        "envs_dir": str(envs_dir),
        "repositories": [
            {"name": "local", "url": str(repo), "root": str(repo / "metadata" / "root.json")}
        ],
    }
    (work / "drivebay.yaml").write_text(json.dumps(config))  # JSON is YAML
    with open(work / "drivebayd.log", "ab") as log:
        daemon = subprocess.Popen(
            [str(BIN / "drivebayd"), "--config", str(work / "drivebay.yaml")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while _ctl(socket, "version").returncode != 0:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError("drivebayd did not answer")
            time.sleep(0.05)
        first = _ctl(socket, "install", NAME)  # builds the env: not measured
        if first.returncode != 0:
            raise RuntimeError(f"first install failed: {first.stderr}")
        times = []
        for n in range(1, rounds + 1):
            version = f"1.0.{n}"
            _publish(repo, staging, version)
            start = time.perf_counter()
            done = _ctl(socket, "install", f"{NAME}=={version}", "--json")
            times.append(time.perf_counter() - start)
            if done.returncode != 0 or json.loads(done.stdout)["state"] != "RUNNING":
                raise RuntimeError(f"install {version} failed: {done.stderr}")
        return statistics.median(times)
    finally:
        daemon.terminate()
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def measure(runs: int, envs_dir: Path | None = None) -> dict[str, Any]:
    """``install_to_running_s`` over ``runs`` rounds, for ``distribution.py --json``;
    ``envs_dir``: a shared env store (default: one made here, warmed by the
    untimed first install)."""
    with tempfile.TemporaryDirectory(prefix="drivebay-bench-install-") as work:
        envs = envs_dir or Path(work) / "envs"
        seconds = install_to_running_s(Path(work), envs, runs)
    return {"install_to_running_s": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--envs-dir", type=Path)
    args = parser.parse_args()
    print(json.dumps(measure(args.rounds, args.envs_dir)))


if __name__ == "__main__":
    main()
