"""The distribution installs one import name, ``drivebay``: a user's
site-packages gains no generic ``kernel``, ``sandbox`` or ``protocol``, and the
repository's own venv and tests import our code only as ``drivebay.…``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import importlib.util, sys\n"
    "import drivebay.kernel.kernel, drivebay.sandbox.spawn, drivebay.protocol.runtime\n"
    "from drivebay.client import AsyncClient, Client\n"
    "print([n for n in ('kernel', 'sandbox', 'protocol') if importlib.util.find_spec(n)])\n"
)


def _uv() -> str:
    return str(Path(sys.executable).parent / "uv")


def _source_copy(target: Path) -> Path:
    """What the wheel is built from, copied: a build writes ``build/`` and
    ``*.egg-info`` beside its sources, never into the repository under test."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, target / name)
    skip = shutil.ignore_patterns("__pycache__")
    for name in ("drivebay", "kernel", "sandbox", "protocol"):
        shutil.copytree(ROOT / name, target / name, symlinks=True, ignore=skip)
    return target


@pytest.mark.slow
def test_the_wheel_installs_drivebay_and_no_generic_name(tmp_path: Path) -> None:
    subprocess.run(
        [
            *(_uv(), "build", "--wheel", "--out-dir", str(tmp_path / "dist")),
            str(_source_copy(tmp_path / "src")),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("drivebay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {
        "drivebay",
        wheel.name.removesuffix(".whl").replace("-py3-none-any", "") + ".dist-info",
    }, tops
    assert "drivebay/kernel/kernel.py" in names
    assert "drivebay/protocol/runtime.py" in names
    assert "drivebay/kernel/httpapi/page/index.html" in names  # the admin page
    venv = tmp_path / "venv"
    subprocess.run(
        [_uv(), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=120
    )
    subprocess.run(
        [_uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"
    refused = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import kernel"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "No module named 'kernel'" in refused.stderr


def test_the_repository_venv_imports_only_drivebay(tmp_path: Path) -> None:
    """Run outside the repository (its root is the current directory nowhere)."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


def test_this_process_refuses_a_second_name() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"import drivebay\.kernel, not kernel"):
        __import__("kernel")
    assert not [
        name for name in sys.modules if name.partition(".")[0] in ("kernel", "sandbox", "protocol")
    ]
