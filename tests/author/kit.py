"""Shared by the author kit's tests: a package index on disk, and where envs go.

Drivers without ``lib/`` get msgspec and uvloop from the package index; here
the index is a directory (a PEP 503 "simple" tree) holding wheels of the
copies installed in the test venv, so the tests need no network.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.wheels import wheel_of_installed

ACCELERATORS = ("msgspec", "uvloop")


def local_index(root: Path) -> tuple[Path, str]:
    """``(flat wheel dir, file:// simple index URL)`` holding the accelerators."""
    files = root / "files"
    for name in ACCELERATORS:
        wheel = wheel_of_installed(files, name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        page = root / "simple" / name / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        link = f'<a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>'
        page.write_text(f"<!DOCTYPE html><html><body>{link}</body></html>\n")
    return files, (root / "simple").as_uri()


def kit_environ(root: Path, index_url: str) -> dict[str, str]:
    """The environment for ``drivebay`` and pytest runs: envs and uv's cache in
    ``root``, packages from the local index, a daemon config of defaults."""
    (root / "no-daemon.yaml").write_text("# defaults\n")
    return {
        **os.environ,
        "DRIVEBAY_ENVS_DIR": str(root / "envs"),
        "UV_INDEX_URL": index_url,
        "UV_CACHE_DIR": str(root / "uv-cache"),
        "DRIVEBAY_CONFIG": str(root / "no-daemon.yaml"),
    }


def drivebay(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``drivebay`` command of this venv."""
    command = [sys.executable, "-m", "drivebay.author.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )
