"""The content-addressed store: one read-only copy per content, even under races."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest

from drivebay.protocol.errors import BundleError, KernelError
from drivebay.sandbox import bundle_store
from drivebay.sandbox.bundle_reader import read_bundle
from drivebay.sandbox.bundle_store import bundle_digest, remove_staging, store_bundle
from drivebay.sandbox.bundles import load_bundle
from tests.sandbox.bundles import make_bundle, zip_bundle

REPO = Path(__file__).resolve().parents[2]


def store_entries(state: Path) -> list[str]:
    return sorted(path.name for path in (state / "bundles").iterdir())


TAG = sys.implementation.cache_tag


def tree(root: Path) -> dict[str, bytes]:
    """The files under ``root``, less the bytecode the store derives from src/."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_load_directory_then_zip_stores_one_copy(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bundle = make_bundle(tmp_path)
    from_dir = load_bundle(bundle, state)
    from_zip = load_bundle(zip_bundle(bundle), state)
    assert from_dir.digest == from_zip.digest == bundle_digest(read_bundle(bundle).files)
    assert from_dir.path == from_zip.path == state / "bundles" / from_dir.digest
    assert (from_dir.source, from_zip.source) == (bundle, tmp_path / "demo-1.0.0.zip")
    assert store_entries(state) == [from_dir.digest]
    assert tree(from_dir.path) == tree(bundle)
    tag = sys.implementation.cache_tag
    assert (from_dir.path / "src" / "__pycache__" / f"demo.{tag}.pyc").is_file()  # compiled once
    assert from_dir.manifest.name == "demo" and from_dir.src_dir == from_dir.path / "src"
    assert from_dir.wheels == {} and from_dir.lib_dir is None


def test_store_is_read_only(tmp_path: Path) -> None:
    stored = load_bundle(make_bundle(tmp_path, src={"demo.py": "", "pkg/deep/x.py": ""}), tmp_path)
    modes = {
        path.relative_to(stored.path).as_posix(): stat.S_IMODE(path.lstat().st_mode)
        for path in [stored.path, *stored.path.rglob("*")]
    }
    assert modes == {
        ".": 0o555,
        "LICENSE": 0o444,
        "driver.yaml": 0o444,
        "src": 0o555,
        "src/demo.py": 0o444,
        "src/pkg": 0o555,
        "src/pkg/deep": 0o555,
        "src/pkg/deep/x.py": 0o444,
        # bytecode compiled at store time, read-only like the sources
        "src/__pycache__": 0o555,
        f"src/__pycache__/demo.{TAG}.pyc": 0o444,
        "src/pkg/deep/__pycache__": 0o555,
        f"src/pkg/deep/__pycache__/x.{TAG}.pyc": 0o444,
    }


def test_editing_or_deleting_the_dropped_bundle_leaves_the_copy(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bundle = make_bundle(tmp_path)
    before = tree(bundle)
    stored = load_bundle(bundle, state)
    (bundle / "src" / "demo.py").write_text("raise SystemExit('edited')\n")
    assert tree(stored.path) == before
    edited = load_bundle(bundle, state)
    assert edited.digest != stored.digest
    for path in sorted(bundle.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    bundle.rmdir()
    assert tree(stored.path) == before
    assert store_entries(state) == sorted([stored.digest, edited.digest])


def test_wheel_hashes(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "lib").mkdir()
    wheels = {"a-1.0-py3-none-any.whl": b"PK first", "b_c-2.0-py3-none-any.whl": b"PK second"}
    for name, data in wheels.items():
        (bundle / "lib" / name).write_bytes(data)
    stored = load_bundle(zip_bundle(bundle), tmp_path / "state")
    assert stored.wheels == {
        name: hashlib.sha256(data).hexdigest() for name, data in wheels.items()
    }
    assert stored.lib_dir == stored.path / "lib"


def test_rejected_bundle_stores_nothing(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "src" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(BundleError):
        load_bundle(bundle, tmp_path / "state")
    assert not (tmp_path / "state").exists()


def test_losing_the_publish_race_keeps_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = read_bundle(make_bundle(tmp_path))
    rename = os.rename

    def other_process_wins(source: Path, target: Path) -> None:
        monkeypatch.setattr(bundle_store.os, "rename", rename)
        store_bundle(files, tmp_path / "state")  # the "other process" publishes first
        rename(source, target)

    monkeypatch.setattr(bundle_store.os, "rename", other_process_wins)
    stored = store_bundle(files, tmp_path / "state")
    assert store_entries(tmp_path / "state") == [stored.digest]
    assert tree(stored.path) == files.files


def test_failed_write_leaves_no_staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = read_bundle(make_bundle(tmp_path))

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_store.os, "fsync", disk_full)
    with pytest.raises(KernelError) as caught:
        store_bundle(files, tmp_path / "state")
    assert str(caught.value) == (
        f"cannot store bundle demo-1.0.0 in {tmp_path / 'state' / 'bundles'}: "
        "[Errno 28] No space left on device"
    )
    assert store_entries(tmp_path / "state") == []


def test_remove_staging_clears_what_a_dead_process_left(tmp_path: Path) -> None:
    stored = load_bundle(make_bundle(tmp_path), tmp_path / "state")
    leftover = tmp_path / "state" / "bundles" / ".staging-dead"
    (leftover / "src").mkdir(parents=True)
    (leftover / "src" / "x.py").write_text("")
    (leftover / "src").chmod(0o555)
    leftover.chmod(0o555)
    remove_staging(tmp_path / "state")
    assert store_entries(tmp_path / "state") == [stored.digest]


_STORE_AT_ONCE = """
import sys
from pathlib import Path
from drivebay.sandbox.bundle_reader import read_bundle
from drivebay.sandbox.bundle_store import store_bundle

files = read_bundle(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()  # the go signal, sent to both processes at once
print(store_bundle(files, Path(sys.argv[2])).digest, flush=True)
"""


def test_two_processes_store_the_same_bundle_at_once(tmp_path: Path) -> None:
    src = {"demo.py": ""} | {f"m{i}.py": f"# {i}\n" * 500 for i in range(40)}
    bundle = zip_bundle(make_bundle(tmp_path, src=src))
    state = tmp_path / "state"
    command = [sys.executable, "-c", _STORE_AT_ONCE, str(bundle), str(state)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(
                subprocess.Popen(
                    command, stdin=PIPE, stdout=PIPE, stderr=PIPE, text=True, cwd=REPO, env=env
                )
            )
            for _ in range(2)
        ]
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=60) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    digests = {out.strip() for out, _ in outputs}
    assert digests == {bundle_digest(read_bundle(bundle).files)}
    assert store_entries(state) == sorted(digests)
