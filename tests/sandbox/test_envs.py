"""Driver environments: content keys, hash-checked offline installs, races, kills, GC.

Every environment here is really built with uv, from tiny wheels made at test
time (``tests.wheels``); one uv cache serves the whole session so only the
first build is cold. Two tests reach the package index (PyPI).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from drivebay.protocol.errors import EnvBuildError
from drivebay.sandbox import envs
from drivebay.sandbox.envs import Env, EnvRequest, collect_garbage, ensure_env, env_key, uv_message
from tests.wheels import build_wheel, sha256_of, wheel_of_installed

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"


def run(coro: Awaitable[T]) -> T:
    """Run ``coro`` on uvloop, returning once every thread it started has ended.

    The loop's executor-shutdown thread may outlive the loop by a moment; it
    is joined so the suite's leak check does not catch it on its way out.
    """

    async def main() -> T:
        return await coro

    before = set(threading.enumerate())
    try:
        return uvloop.run(main())
    finally:
        for thread in set(threading.enumerate()) - before:
            thread.join(timeout=10)


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pkg-a 1.0 and 2.0 (2.0 needs dep-b), dep-b, and real msgspec and uvloop wheels."""
    house = tmp_path_factory.mktemp("wheelhouse")
    for version in ("1.0", "2.0"):
        requires = ["dep-b>=1"] if version == "2.0" else []
        files = {"pkg_a/__init__.py": f"VERSION = {version!r}\n\ndef where(): pass\n"}
        build_wheel(house / version, "pkg-a", version, files, requires=requires)
    build_wheel(house / "dep-b", "dep-b", "1.0", {"dep_b/__init__.py": "NAME = 'dep-b'\n"})
    wheel_of_installed(house / "msgspec", "msgspec")
    wheel_of_installed(house / "uvloop", "uvloop")
    return house


def make_lib(root: Path, *wheels: Path) -> Path:
    lib = root / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        shutil.copy2(wheel, lib)
    return lib


def request(lib: Path | None, *deps: str, protocol: int = 1) -> EnvRequest:
    wheels = {} if lib is None else {p.name: sha256_of(p) for p in sorted(lib.glob("*.whl"))}
    return EnvRequest(Path(sys.executable), deps, wheels, lib, protocol)


def whl(house: Path, folder: str) -> Path:
    (wheel,) = (house / folder).glob("*.whl")
    return wheel


def in_env(env: Env, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env.python), "-I", "-c", code], capture_output=True, text=True, check=False
    )


def build(req: EnvRequest, envs_dir: Path, uv_cache: Path, **kw: Any) -> Env:
    return run(ensure_env(req, envs_dir, uv_cache=uv_cache, **kw))


def leftovers(envs_dir: Path) -> list[str]:
    return sorted(p.name for p in envs_dir.iterdir() if p.name.startswith((".staging", ".trash")))


# -- contents ------------------------------------------------------------------


def test_two_drivers_pinning_different_versions_each_see_their_own(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    lib1 = make_lib(tmp_path / "one", whl(wheelhouse, "1.0"))
    lib2 = make_lib(tmp_path / "two", whl(wheelhouse, "2.0"), whl(wheelhouse, "dep-b"))

    async def both() -> list[Env]:
        reqs = [request(lib1, "pkg-a==1.0"), request(lib2, "pkg-a==2.0")]
        return list(
            await asyncio.gather(
                *(ensure_env(r, tmp_path / "envs", uv_cache=uv_cache) for r in reqs)
            )
        )

    one, two = run(both())
    assert one.key != two.key
    assert in_env(one, "import pkg_a; print(pkg_a.VERSION)").stdout == "1.0\n"
    where = in_env(
        one, "import pkg_a; print(pkg_a.__file__); print(pkg_a.where.__code__.co_filename)"
    )
    assert where.stdout.splitlines() == [str(one.path / SITE / "pkg_a" / "__init__.py")] * 2
    assert in_env(two, "import pkg_a, dep_b; print(pkg_a.VERSION)").stdout == "2.0\n"
    assert one.packages == {"pkg-a": "1.0"}
    assert two.packages == {"pkg-a": "2.0", "dep-b": "1.0"}
    assert (one.codec, two.codec) == ("stdlib", "stdlib")  # no msgspec wheel in lib/
    site = next(one.path.glob("lib/python*/site-packages"))
    assert list(site.glob("pkg_a/__pycache__/*.pyc")), "bytecode is compiled at build time"
    assert all(os.stat(p).st_mode & 0o222 == 0 for p in (one.path, site, site / "pkg_a"))


def test_kernel_packages_are_invisible(tmp_path: Path, wheelhouse: Path, uv_cache: Path) -> None:
    import watchfiles as kernel_has_it  # noqa: F401  # the kernel's venv has watchfiles

    env = build(
        request(make_lib(tmp_path, whl(wheelhouse, "1.0")), "pkg-a"), tmp_path / "e", uv_cache
    )
    probe = in_env(env, "import sys; print(sys.prefix); import watchfiles")
    assert "No module named 'watchfiles'" in probe.stderr
    assert probe.stdout == f"{env.path}\n"
    kernel_site = next(Path(sys.prefix).glob("lib/python*/site-packages"))
    assert str(kernel_site) not in in_env(env, "import sys; print(sys.path)").stdout


def test_msgspec_from_lib_gives_the_fast_codec(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    lib = make_lib(tmp_path, whl(wheelhouse, "1.0"), whl(wheelhouse, "msgspec"))
    env = build(request(lib, "pkg-a"), tmp_path / "envs", uv_cache)
    assert env.codec == "msgspec"
    assert "msgspec" in env.packages and "pkg-a" in env.packages
    assert in_env(env, "import msgspec; print(msgspec.msgpack.encode(1))").stdout == "b'\\x01'\n"
    meta = json.loads((env.path / envs.META).read_text())
    assert (meta["codec"], meta["msgspec"]) == ("msgspec", "added by the builder")
    assert (env.loop, meta["uvloop"]) == ("asyncio", "none in lib/")


def test_uvloop_from_lib_gives_the_fast_loop(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    lib = make_lib(tmp_path, whl(wheelhouse, "1.0"), whl(wheelhouse, "uvloop"))
    env = build(request(lib, "pkg-a"), tmp_path / "envs", uv_cache)
    assert (env.loop, env.codec) == ("uvloop", "stdlib")
    assert sorted(env.packages) == ["pkg-a", "uvloop"]
    assert in_env(env, "import uvloop").returncode == 0
    meta = json.loads((env.path / envs.META).read_text())
    assert (meta["uvloop"], meta["msgspec"]) == ("added by the builder", "none in lib/")


def test_drivers_uvloop_pin_is_never_overridden(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    mine = build_wheel(tmp_path / "w", "uvloop", "0.1.0", {"uvloop/__init__.py": "MINE = 1\n"})
    lib = make_lib(tmp_path, mine, whl(wheelhouse, "uvloop"), whl(wheelhouse, "msgspec"))
    env = build(request(lib, "uvloop==0.1.0"), tmp_path / "envs", uv_cache)
    assert env.packages == {"uvloop": "0.1.0", "msgspec": env.packages["msgspec"]}
    meta = json.loads((env.path / envs.META).read_text())
    assert (meta["uvloop"], meta["msgspec"]) == ("declared by the driver", "added by the builder")


def test_drivers_msgspec_pin_is_never_overridden(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    old = build_wheel(tmp_path / "w", "msgspec", "0.17.0", {"msgspec/__init__.py": "OLD = 1\n"})
    lib = make_lib(tmp_path, old, whl(wheelhouse, "msgspec"))
    env = build(request(lib, "msgspec==0.17.0"), tmp_path / "envs", uv_cache)
    assert env.packages == {"msgspec": "0.17.0"}
    assert env.codec == "stdlib"  # the runtime wants msgspec >= 0.18
    meta = json.loads((env.path / envs.META).read_text())
    assert meta["msgspec"] == "declared by the driver"


def test_unusable_msgspec_wheel_in_lib_falls_back_to_stdlib(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    lib = make_lib(tmp_path, whl(wheelhouse, "1.0"))
    shutil.copy(
        whl(wheelhouse, "msgspec"), lib / "msgspec-0.22.0-cp30-cp30-manylinux_2_17_x86_64.whl"
    )
    shutil.copy(whl(wheelhouse, "uvloop"), lib)  # usable, but resolved with msgspec
    env = build(request(lib, "pkg-a"), tmp_path / "envs", uv_cache)
    assert (env.codec, env.loop, env.packages) == ("stdlib", "asyncio", {"pkg-a": "1.0"})
    meta = json.loads((env.path / envs.META).read_text())
    assert meta["msgspec"].startswith("unusable: ")
    assert meta["uvloop"].startswith("unusable: ")


def test_without_lib_installs_from_the_index_and_adds_msgspec_and_uvloop(
    tmp_path: Path, uv_cache: Path
) -> None:
    env = build(request(None), tmp_path / "envs", uv_cache)
    assert (env.codec, env.loop) == ("msgspec", "uvloop")
    assert sorted(env.packages) == ["msgspec", "uvloop"]
    assert in_env(env, "import msgspec, uvloop").returncode == 0


def test_a_source_distribution_is_never_built(
    tmp_path: Path, uv_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its setup code would run as the daemon's user: only wheels are installed."""
    marker = tmp_path / "setup-ran"
    package = tmp_path / "sdist" / "sdistonly-1.0"
    package.mkdir(parents=True)
    (package / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: sdistonly\nVersion: 1.0\n")
    (package / "setup.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from setuptools import setup\nsetup(name='sdistonly', version='1.0')\n"
    )
    index = tmp_path / "index" / "sdistonly"
    index.mkdir(parents=True)
    with tarfile.open(index / "sdistonly-1.0.tar.gz", "w:gz") as archive:
        archive.add(package, arcname=package.name)
    (index / "index.html").write_text('<a href="sdistonly-1.0.tar.gz">sdistonly-1.0.tar.gz</a>')
    monkeypatch.setenv("UV_EXTRA_INDEX_URL", (tmp_path / "index").as_uri())
    with pytest.raises(EnvBuildError, match="sdistonly"):
        build(request(None, "sdistonly"), tmp_path / "envs", uv_cache)
    assert not marker.exists()


# -- keys and hash checking ------------------------------------------------------


def test_key_is_stable_and_follows_every_input(tmp_path: Path, wheelhouse: Path) -> None:
    lib = make_lib(tmp_path / "a", whl(wheelhouse, "2.0"), whl(wheelhouse, "dep-b"))
    same_files_elsewhere = make_lib(
        tmp_path / "b", whl(wheelhouse, "2.0"), whl(wheelhouse, "dep-b")
    )
    key = env_key(request(lib, "pkg-a", "dep-b"))
    assert len(key) == 64 and key == env_key(request(lib, "pkg-a", "dep-b"))
    assert key == env_key(request(same_files_elsewhere, "dep-b", "pkg-a"))
    assert key != env_key(request(lib, "pkg-a", "dep-b", protocol=2))
    assert key != env_key(request(lib, "pkg-a"))
    assert key != env_key(request(None, "pkg-a", "dep-b"))
    build_wheel(lib, "pkg-a", "2.0", {"pkg_a/__init__.py": "VERSION = 'patched'\n"})
    assert key != env_key(request(lib, "pkg-a", "dep-b"))


def test_a_replaced_wheel_is_installed_not_the_cached_one(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    lib = make_lib(tmp_path, whl(wheelhouse, "1.0"))
    first = build(request(lib, "pkg-a"), tmp_path / "envs", uv_cache)
    shipped = lib / whl(wheelhouse, "1.0").name
    stamp = os.stat(shipped)
    build_wheel(lib, "pkg-a", "1.0", {"pkg_a/__init__.py": "VERSION = 'replaced'\n"})
    os.utime(shipped, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same name, size class, mtime
    second = build(request(lib, "pkg-a"), tmp_path / "envs", uv_cache)
    assert second.key != first.key
    assert in_env(second, "import pkg_a; print(pkg_a.VERSION)").stdout == "replaced\n"
    assert in_env(first, "import pkg_a; print(pkg_a.VERSION)").stdout == "1.0\n"


def test_a_wheel_changed_after_hashing_fails_the_hash_check(tmp_path: Path, uv_cache: Path) -> None:
    lib = tmp_path / "lib"
    shipped = build_wheel(lib, "tamper-me", "1.0", {"tamper_me.py": "X = 'shipped'\n"})
    req = request(lib, "tamper-me")
    build_wheel(lib, "tamper-me", "1.0", {"tamper_me.py": "X = 'evil'\n"})
    with pytest.raises(EnvBuildError) as caught:
        build(req, tmp_path / "envs", uv_cache)
    message = str(caught.value)
    assert message.startswith("installing dependencies failed (uv exit 1): ")
    assert "Hash mismatch for `tamper-me==1.0`" in message
    assert f"Expected: sha256:{req.wheels[shipped.name]}" in message
    assert f"Computed: sha256:{sha256_of(shipped)}" in message
    assert "\n" not in message
    assert sorted(p.name for p in (tmp_path / "envs").iterdir()) == [".locks"]


def test_missing_wheel_is_named(tmp_path: Path, wheelhouse: Path, uv_cache: Path) -> None:
    lib = make_lib(tmp_path, whl(wheelhouse, "1.0"))
    with pytest.raises(EnvBuildError) as caught:
        build(request(lib, "pkg-a", "pkg-z>=1.2"), tmp_path / "envs", uv_cache)
    assert str(caught.value) == (
        f"{lib}: no wheel for 'pkg-z' (dependency 'pkg-z>=1.2'); "
        "add its wheel to lib/, or remove lib/ to install from the package index"
    )


def test_missing_transitive_wheel_is_named_by_uv(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    lib = make_lib(tmp_path, whl(wheelhouse, "2.0"))  # pkg-a 2.0 needs dep-b
    with pytest.raises(EnvBuildError) as caught:
        build(request(lib, "pkg-a"), tmp_path / "envs", uv_cache)
    message = str(caught.value)
    assert message.startswith(f"resolving pkg-a from {lib} failed (uv exit 1): ")
    assert "dep-b was not found in the provided package locations" in message
    assert leftovers(tmp_path / "envs") == []


def test_a_dependency_cannot_smuggle_options(tmp_path: Path, uv_cache: Path) -> None:
    with pytest.raises(EnvBuildError, match="is not a PEP 508 requirement"):
        build(request(None, "pkg-a\n--index-url=http://evil"), tmp_path / "envs", uv_cache)


def test_uv_message_is_one_line_from_its_error() -> None:
    stderr = (
        "Using Python 3.11.7 environment at: x\nResolved 3 packages in 1ms\n"
        "error: Failed to download `a==1`\n  cause: Hash mismatch for `a==1`\n\n"
        "         Expected:\n           sha256:00\n"
    )
    assert uv_message(stderr) == (
        "Failed to download `a==1` cause: Hash mismatch for `a==1` Expected: sha256:00"
    )
    assert uv_message("") == "uv printed no error message"


# -- failures of uv itself -------------------------------------------------------


@pytest.fixture
def fake_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    import uv

    def install(script: str) -> None:
        path = tmp_path / "fake-uv"
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(0o755)
        monkeypatch.setattr(uv, "find_uv_bin", lambda: str(path))

    return install


class Spawned:
    """Every process ``envs`` starts, and an event set when one is ``uv pip install``."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.installing = asyncio.Event()


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Spawned:
    seen = Spawned()
    real = asyncio.create_subprocess_exec

    async def spy(*args: Any, **kw: Any) -> asyncio.subprocess.Process:
        seen.procs.append(await real(*args, **kw))
        if "install" in args:
            seen.installing.set()
        return seen.procs[-1]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    return seen


def test_uv_failure_is_reported_with_its_words(
    tmp_path: Path, uv_cache: Path, fake_uv: Callable[[str], None]
) -> None:
    fake_uv("echo 'Using CPython 3.11' >&2; echo 'error: no space left on device' >&2; exit 2")
    with pytest.raises(EnvBuildError) as caught:
        build(request(None), tmp_path / "envs", uv_cache)
    assert str(caught.value) == (
        "creating the virtualenv failed (uv exit 2): no space left on device"
    )
    assert leftovers(tmp_path / "envs") == []


def test_missing_uv_binary_is_a_build_error(
    tmp_path: Path, uv_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uv

    monkeypatch.setattr(uv, "find_uv_bin", lambda: str(tmp_path / "no-uv"))
    with pytest.raises(EnvBuildError, match=r"^creating the virtualenv failed: cannot run uv \("):
        build(request(None), tmp_path / "envs", uv_cache)
    assert leftovers(tmp_path / "envs") == []


def test_timeout_kills_and_reaps_uv(
    tmp_path: Path,
    uv_cache: Path,
    fake_uv: Callable[[str], None],
    spawned: Spawned,
) -> None:
    fake_uv("exec sleep 300")
    with pytest.raises(EnvBuildError) as caught:
        build(request(None), tmp_path / "envs", uv_cache, timeout_s=0.5)
    assert str(caught.value).endswith(
        "build timed out after 0.5 s (uv was killed); check the package index or raise the timeout"
    )
    assert [proc.returncode for proc in spawned.procs] == [-signal.SIGKILL]
    assert leftovers(tmp_path / "envs") == []


def test_cancel_mid_install_kills_uv_and_leaves_nothing(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path, spawned: Spawned
) -> None:
    lib = make_lib(tmp_path, whl(wheelhouse, "1.0"), whl(wheelhouse, "msgspec"))
    envs_dir = tmp_path / "envs"

    async def cancel_when_installing() -> None:
        task = asyncio.create_task(ensure_env(request(lib, "pkg-a"), envs_dir, uv_cache=uv_cache))
        installing = asyncio.create_task(spawned.installing.wait())
        await asyncio.wait({task, installing}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert installing.done() and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_when_installing())
    assert len(spawned.procs) == 3  # venv, compile, install
    assert spawned.procs[-1].returncode == -signal.SIGKILL
    assert all(proc.returncode is not None for proc in spawned.procs)
    assert sorted(p.name for p in envs_dir.iterdir()) == [".locks"]


# -- two processes: race and kill ------------------------------------------------

CHILD = """
import asyncio, json, logging, sys
from pathlib import Path
from drivebay.sandbox.envs import EnvRequest, ensure_env

spec = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
req = EnvRequest(Path(sys.executable), tuple(spec["deps"]), spec["wheels"], Path(spec["lib"]), 1)
if spec["hold_install"]:
    real = asyncio.create_subprocess_exec
    async def spy(*args, **kw):
        proc = await real(*args, **kw)
        if "install" in args:
            print("installing", flush=True)
            await asyncio.Event().wait()  # killed here, with uv running
        return proc
    asyncio.create_subprocess_exec = spy
else:
    print("ready", flush=True)
    sys.stdin.readline()
env = asyncio.run(ensure_env(req, Path(spec["envs"]), uv_cache=Path(spec["cache"])))
print(json.dumps({"key": env.key, "path": str(env.path)}), flush=True)
"""


@pytest.fixture
def child_builds(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(
        req: EnvRequest, envs_dir: Path, uv_cache: Path, hold_install: bool
    ) -> subprocess.Popen[str]:
        spec: dict[str, Any] = {
            "deps": req.dependencies,
            "wheels": dict(req.wheels),
            "lib": str(req.wheel_dir),
        }
        spec |= {"envs": str(envs_dir), "cache": str(uv_cache), "hold_install": hold_install}
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(spec)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def read_line(proc: subprocess.Popen[str], deadline: float = 30) -> str:
    """The child's next stdout line, waited for up to ``deadline`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], deadline)
    assert ready, f"child said nothing within {deadline} s"
    return proc.stdout.readline()


def test_two_processes_racing_for_one_key_share_one_build(
    tmp_path: Path,
    wheelhouse: Path,
    uv_cache: Path,
    child_builds: Callable[..., subprocess.Popen[str]],
) -> None:
    lib = make_lib(
        tmp_path, whl(wheelhouse, "2.0"), whl(wheelhouse, "dep-b"), whl(wheelhouse, "msgspec")
    )
    req, envs_dir = request(lib, "pkg-a"), tmp_path / "envs"
    children = [child_builds(req, envs_dir, uv_cache, hold_install=False) for _ in range(2)]
    assert [read_line(child) for child in children] == ["ready\n", "ready\n"]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = [child.communicate(timeout=60) for child in children]
    assert [child.returncode for child in children] == [0, 0], results
    answers = [json.loads(out.splitlines()[-1]) for out, _ in results]
    assert answers[0] == answers[1] == {"key": env_key(req), "path": str(envs_dir / env_key(req))}
    assert sum(err.count(": building (") for _, err in results) == 1
    assert sorted(p.name for p in envs_dir.iterdir()) == [".locks", env_key(req)]


def test_kernel_killed_mid_build_leaves_nothing_that_is_used(
    tmp_path: Path,
    wheelhouse: Path,
    uv_cache: Path,
    child_builds: Callable[..., subprocess.Popen[str]],
) -> None:
    lib = make_lib(tmp_path, whl(wheelhouse, "1.0"), whl(wheelhouse, "msgspec"))
    req, envs_dir = request(lib, "pkg-a"), tmp_path / "envs"
    child = child_builds(req, envs_dir, uv_cache, hold_install=True)
    assert read_line(child) == "installing\n"
    assert [p.name.split("-")[1] for p in envs_dir.glob(".staging-*")] == [env_key(req)]
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert not (envs_dir / env_key(req)).exists()
    env = build(req, envs_dir, uv_cache)  # waits for the orphaned uv: it holds the lock
    assert in_env(env, "import pkg_a, msgspec; print(pkg_a.VERSION)").stdout == "1.0\n"
    assert sorted(p.name for p in envs_dir.iterdir()) == [".locks", env.key]


def test_one_process_asking_twice_at_once_builds_once(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drivebay.sandbox.envs")
    req = request(make_lib(tmp_path, whl(wheelhouse, "1.0")), "pkg-a")

    async def twice() -> list[Env]:
        calls = (ensure_env(req, tmp_path / "envs", uv_cache=uv_cache) for _ in range(2))
        return list(await asyncio.gather(*calls))

    first, second = run(twice())
    assert first == second
    assert sum(": building (" in r.getMessage() for r in caplog.records) == 1


def test_waiting_for_a_stuck_build_times_out_and_leaves_the_lock_free(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    req, envs_dir = request(make_lib(tmp_path, whl(wheelhouse, "1.0")), "pkg-a"), tmp_path / "envs"
    (envs_dir / envs.LOCKS).mkdir(parents=True)
    key = env_key(req)

    async def blocked_then_free() -> Env:
        with (envs_dir / envs.LOCKS / f"{key}.lock").open("w") as other_build:
            fcntl.flock(other_build, fcntl.LOCK_EX)
            with pytest.raises(EnvBuildError) as caught:
                await ensure_env(req, envs_dir, uv_cache=uv_cache, timeout_s=0.2)
            assert str(caught.value) == f"env {key[:12]}: waited over 0.2 s for another build of it"
        return await ensure_env(req, envs_dir, uv_cache=uv_cache, timeout_s=30)

    assert run(blocked_then_free()).key == key


# -- garbage collection and the fast path ---------------------------------------


def test_gc_removes_only_unkept_and_skips_running_builds(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path
) -> None:
    envs_dir = tmp_path / "envs"
    keep = build(
        request(make_lib(tmp_path / "k", whl(wheelhouse, "1.0")), "pkg-a"), envs_dir, uv_cache
    )
    drop = build(
        request(
            make_lib(tmp_path / "d", whl(wheelhouse, "2.0"), whl(wheelhouse, "dep-b")), "pkg-a"
        ),
        envs_dir,
        uv_cache,
    )
    busy = build(
        request(make_lib(tmp_path / "b", whl(wheelhouse, "dep-b")), "dep-b"), envs_dir, uv_cache
    )
    stale = envs_dir / f".staging-{'e' * 64}-dead"
    (stale / "lib").mkdir(parents=True)
    (stale / "lib").chmod(0o555)
    (envs_dir / ".trash-x-1" / "bin").mkdir(parents=True)
    with (envs_dir / envs.LOCKS / f"{busy.key}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert collect_garbage(envs_dir, [keep.key]) == [drop.key]
    assert sorted(p.name for p in envs_dir.iterdir()) == sorted([".locks", keep.key, busy.key])
    assert in_env(keep, "import pkg_a").returncode == 0
    assert collect_garbage(envs_dir, {keep.key}) == [busy.key]
    assert collect_garbage(tmp_path / "absent", []) == []


def test_a_built_env_is_found_fast(tmp_path: Path, wheelhouse: Path, uv_cache: Path) -> None:
    req = request(make_lib(tmp_path, whl(wheelhouse, "1.0")), "pkg-a")
    first = build(req, tmp_path / "envs", uv_cache)

    async def timed_hit() -> tuple[float, Env]:
        started = time.perf_counter()
        env = await ensure_env(req, tmp_path / "envs", uv_cache=uv_cache)
        return time.perf_counter() - started, env

    elapsed, again = run(timed_hit())
    assert again == first
    assert elapsed < 0.05


# -- a driver in a built env talks to the kernel, whatever msgspec it pinned ---


async def _talk(env: Env, tmp_path: Path) -> tuple[str, object, str]:
    from drivebay.kernel.drivers.process import DriverProcess
    from drivebay.sandbox.runtime_dir import ensure_runtime_dir
    from drivebay.sandbox.spawn import SpawnSpec
    from tests.helpers import FAST, FIXTURES

    spec = SpawnSpec(
        python=env.python,
        runtime_dir=ensure_runtime_dir(tmp_path / "state"),
        entrypoint="misbehave:Misbehave",
        driver="misbehave",
        version="1.0.0",
        cwd=tmp_path,
        src=FIXTURES / "misbehave" / "src",
    )
    proc = DriverProcess(spec, FAST)
    await proc.start()
    try:
        await proc.attach("r", {})
        echoed = await proc.call("r", "echo", {"value": {"n": [1, 2.5, b"x"]}})
        return proc.hello_codec, echoed, await proc.call("r", "loop_name", {})
    finally:
        await proc.stop()


@pytest.mark.parametrize("pin", ["old-stub", "current"])
def test_a_driver_pinning_its_own_msgspec_still_talks(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path, pin: str
) -> None:
    if pin == "old-stub":  # an old msgspec the runtime must not use (no usable API)
        files = {"msgspec/__init__.py": "__version__ = '0.17.0'\n"}
        wheel = build_wheel(tmp_path / "w", "msgspec", "0.17.0", files)
        lib, dependency, codec = make_lib(tmp_path, wheel), "msgspec==0.17.0", "stdlib"
    else:
        lib, dependency, codec = (
            make_lib(tmp_path, whl(wheelhouse, "msgspec")),
            "msgspec",
            "msgspec",
        )
    env = build(request(lib, dependency), tmp_path / "envs", uv_cache)
    hello_codec, echoed, loop = run(_talk(env, tmp_path))
    assert hello_codec.startswith(codec)
    assert echoed == {"n": [1, 2.5, b"x"]}
    assert loop == "asyncio"  # no uvloop in lib/: the stdlib loop


def test_a_driver_in_an_index_built_env_runs_on_uvloop(tmp_path: Path, uv_cache: Path) -> None:
    env = build(request(None), tmp_path / "envs", uv_cache)
    hello_codec, echoed, loop = run(_talk(env, tmp_path))
    assert hello_codec.startswith("msgspec")
    assert echoed == {"n": [1, 2.5, b"x"]}
    assert loop == "uvloop"
