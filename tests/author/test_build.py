"""``drivebay build``: wheels for the target in lib/, a hashed lock, and a zip
that is byte-for-byte the same from the same input, accepted by the daemon."""

from __future__ import annotations

import os
import random
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from drivebay.author.build import BuildError, Target
from drivebay.author.bundle_zip import zip_timestamp
from drivebay.author.cli import main
from drivebay.author.new import write_driver
from drivebay.sandbox.bundles import load_bundle
from tests.author.kit import drivebay, kit_environ, local_index


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A flat wheel dir with msgspec and uvloop, and an environment in which
    pip and uv see nothing else (no config files, no PIP_* settings)."""
    root = tmp_path_factory.mktemp("build")
    files, index_url = local_index(root / "index")
    env = {k: v for k, v in kit_environ(root, index_url).items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env.pop("SOURCE_DATE_EPOCH", None)
    return files, env


def _source(root: Path) -> dict[str, bytes]:
    """A new driver with a package of its own and things the build leaves out."""
    write_driver("repro-demo", "network", root)
    (root / "src" / "helpers").mkdir()
    (root / "src" / "helpers" / "__init__.py").write_text("VALUE = 1\n")
    (root / "src" / "helpers" / "data.txt").write_text("éàü\n" * 50)
    for junk in ("src/__pycache__/x.cpython-311.pyc", ".git/HEAD", "tests/extra.py"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("left out")
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _copy_elsewhere(files: dict[str, bytes], root: Path) -> None:
    """The same files written in another order, under another umask, with
    other modes and mtimes."""
    old = os.umask(0o077)
    try:
        for path in sorted(files, reverse=True):
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[path])
            target.chmod(0o755 if path.endswith(".py") else 0o600)
            when = random.uniform(1e9, 2e9)
            os.utime(target, (when, when))
    finally:
        os.umask(old)


@pytest.mark.slow
def test_two_builds_from_different_copies_are_identical_and_load(tmp_path, index):
    wheels, env = index
    files = _source(tmp_path / "a" / "repro-demo")
    _copy_elsewhere(files, tmp_path / "b" / "deeper" / "other-name")
    where = ["--no-index", "--find-links", str(wheels)]

    first = drivebay("build", "repro-demo", "-o", str(tmp_path / "out1"), *where,
                     cwd=tmp_path / "a", env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "2 wheels for Python" in first.stdout and "msgspec" in first.stdout
    second = drivebay("build", str(tmp_path / "b" / "deeper" / "other-name"),
                      "-o", str(tmp_path / "out2"), *where, cwd=tmp_path, env=env)  # fmt: skip
    assert second.returncode == 0, second.stderr

    one = tmp_path / "out1" / "repro-demo-0.1.0.zip"
    two = tmp_path / "out2" / "repro-demo-0.1.0.zip"
    assert one.read_bytes() == two.read_bytes()

    with zipfile.ZipFile(one) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        lock = archive.read("requirements.lock").decode()
    assert names == sorted(names, key=str.encode)
    assert {"src/", "src/helpers/", "lib/"} <= set(names)
    assert not any(n.startswith((".git", "tests/", "dist/")) or ".pyc" in n for n in names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    modes = {info.filename: stat.S_IMODE(info.external_attr >> 16) for info in infos}
    assert {modes[n] for n in names if n.endswith("/")} == {0o755}
    assert {modes[n] for n in names if not n.endswith("/")} == {0o644}
    assert "msgspec==" in lock and "uvloop==" in lock and "--hash=sha256:" in lock
    assert (tmp_path / "a" / "repro-demo" / "requirements.lock").read_text() == lock

    stored = load_bundle(one, tmp_path / "state")
    assert stored.manifest.name == "repro-demo"
    assert sorted(name.split("-")[0] for name in stored.wheels) == ["msgspec", "uvloop"]
    for directory, _, _ in os.walk(tmp_path / "state"):
        os.chmod(directory, 0o755)  # the store is read-only; let tmp_path go


def test_refusals_are_one_line(tmp_path, capsys):
    bundle = tmp_path / "linked"
    write_driver("linked", "network", bundle)
    (bundle / "src" / "alias.py").symlink_to(bundle / "src" / "linked.py")
    assert main(["build", str(bundle), "--no-index"]) == 1
    shutil.rmtree(bundle)
    write_driver("linked", "network", bundle)
    manifest = bundle / "driver.yaml"
    manifest.write_text(manifest.read_text().replace("version: 0.1.0", "version: one"))
    assert main(["build", str(bundle), "--no-index"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "drivebay: linked: src/alias.py: is a symbolic link; put the file itself there",
        "drivebay: linked: driver.yaml: version: "
        "'one' is not a PEP 440 version (for example 1.2.0)",
    ]
    assert not (bundle / "dist").exists()


def test_targets_and_timestamps(monkeypatch):
    assert Target.parse("3.12", "manylinux_2_35_x86_64").uv_platform() == "x86_64-manylinux_2_35"
    assert Target.parse("3.12", "manylinux_2_27_aarch64").uv_platform() == (
        "aarch64-manylinux_2_17"
    )
    assert Target.parse("3.12", "macosx_11_0_arm64").uv_platform() == "aarch64-apple-darwin"
    tags = Target.parse("3.12", "manylinux_2_28_x86_64").pip_platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux_2_29_x86_64" not in tags
    with pytest.raises(BuildError, match="not a platform tag"):
        Target.parse("3.12", "amiga_68k")
    with pytest.raises(BuildError, match="not a Python version"):
        Target.parse("python3", None)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000001")
    assert zip_timestamp() == (2023, 11, 14, 22, 13, 20)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "5")
    assert zip_timestamp() == (1980, 1, 1, 0, 0, 0)
