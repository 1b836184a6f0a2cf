"""Run the ``drivebay`` console script of this venv as an author would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DRIVEBAY = str(Path(sys.executable).parent / "drivebay")


def drivebay(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DRIVEBAY, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def ok(*args: str | Path, cwd: Path | None = None) -> str:
    result = drivebay(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(*args: str | Path) -> str:
    """The one line a refused command prints (exit 1)."""
    result = drivebay(*args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("drivebay: ")
    return result.stderr.strip()
