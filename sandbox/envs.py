"""Drivers' virtualenvs: built with uv, shared by content address, collected when unused.

``ensure_env`` returns the environment an ``EnvRequest`` names (see
``env_key``), building it first if it does not exist yet:

1. ``uv venv --relocatable`` from the requested interpreter, in a staging
   directory ``.staging-<key>-<random>`` beside the final one; no system
   site-packages, so nothing of the kernel's environment is visible;
2. ``uv pip compile`` resolves the dependencies (from ``lib/`` alone when the
   bundle ships one: ``--no-index --find-links --offline --no-build``);
3. ``uv pip install --compile-bytecode`` installs the pins; from ``lib/``
   in hash-checking mode (``--require-hashes``, every pin carrying the
   sha256 the kernel computed), so only the shipped files can be installed;
4. metadata (``drivebay-env.json``) is written, the tree made read-only and
   renamed to ``<envs_dir>/<key>`` in one step.

A directory named by a key is therefore always complete: a build killed at
any point leaves only a staging directory, removed by the next build of that
key or by ``collect_garbage``. Builds of one key are serialized across
processes by ``fcntl.flock`` on ``.locks/<key>.lock``; uv inherits that lock,
so even when the kernel is killed, nobody removes a staging directory while
an orphaned uv still writes into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from drivebay.protocol.errors import EnvBuildError
from drivebay.sandbox.env_key import (
    ACCELERATORS,
    EnvRequest,
    accelerator_note,
    addable_accelerators,
    canonical_name,
    check_lib_covers,
    env_key,
    hashed_pins,
    requirements,
)

__all__ = ["Env", "EnvRequest", "collect_garbage", "ensure_env", "env_key"]

log = logging.getLogger(__name__)

META = "drivebay-env.json"
LOCKS = ".locks"
_KEY = re.compile(r"(?:\.staging-)?([0-9a-f]{64})(?:-.*)?")
# uv settings the operator may give the daemon (index, TLS); any other UV_*
# or Python variable of the kernel's own environment must not shape a driver's.
_UV_VARS = {
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_INSECURE_HOST",
    "UV_NATIVE_TLS",
    "UV_HTTP_TIMEOUT",
    "UV_KEYRING_PROVIDER",
    "UV_CACHE_DIR",
}
_NOISE = ("Using ", "Resolved ", "Prepared ", "Installed ", "Audited ", "Bytecode compiled ")


class EnvMeta(msgspec.Struct, frozen=True, kw_only=True):
    """``drivebay-env.json``: what was built and why (for ``describe`` and debugging)."""

    key: str
    codec: str  # "msgspec" or "stdlib"
    msgspec: str  # how msgspec came in, or why it did not
    uvloop: str  # how uvloop came in, or why it did not
    loop: str  # "uvloop" (uvloop installed) or "asyncio"
    packages: dict[str, str]
    python: str  # the interpreter the venv is based on
    dependencies: list[str]
    wheels: dict[str, str]
    protocol_version: int


@dataclass(frozen=True)
class Env:
    """A finished, read-only environment."""

    path: Path
    python: Path  # the venv's bin/python
    key: str
    codec: str  # "msgspec" (msgspec >= 0.18 installed) or "stdlib"
    loop: str  # "uvloop" (uvloop installed) or "asyncio": the child's event loop
    packages: dict[str, str] = field(default_factory=dict)  # canonical name -> version


async def ensure_env(
    req: EnvRequest,
    envs_dir: Path,
    *,
    uv_cache: Path | None = None,
    timeout_s: float = 600,
    on_built: Callable[[float], None] | None = None,
) -> Env:
    """The environment ``req`` names: the existing one, or a new build.

    Waiting for another process's build of the same key and the build itself
    each get ``timeout_s``. Raises EnvBuildError with uv's own message when
    the build fails or times out (nothing is left behind, nothing is retried),
    or at once when ``lib/`` lacks a wheel a dependency names. ``on_built``
    is told the seconds a build took (not called when the env was ready).
    """
    key = await asyncio.to_thread(env_key, req)
    final = envs_dir / key
    env = _load(final)
    if env is not None:
        return env
    check_lib_covers(req)
    (envs_dir / LOCKS).mkdir(parents=True, exist_ok=True)
    lock_fd = await _lock(envs_dir / LOCKS / f"{key}.lock", timeout_s)
    try:
        env = _load(final)
        if env is not None:
            return env
        _discard_leftovers(envs_dir, key)
        started = time.monotonic()
        env = await _build(req, key, envs_dir, _Uv(uv_cache, lock_fd, envs_dir), timeout_s)
        if on_built is not None:
            on_built(time.monotonic() - started)
        return env
    finally:
        os.close(lock_fd)


def collect_garbage(envs_dir: Path, keep: Iterable[str]) -> list[str]:
    """Remove every environment whose key is not in ``keep``; return their keys.

    Also removes staging directories of builds that are no longer running and
    half-removed trees. An environment whose build lock is held (a build of
    that key is running) is left for the next collection.
    """
    kept = set(keep)
    removed: list[str] = []
    if not envs_dir.is_dir():
        return removed
    for entry in sorted(envs_dir.iterdir()):
        match = _KEY.fullmatch(entry.name)
        if entry.name.startswith(".trash-"):
            _remove_tree(entry)
        elif match is None or entry.name in kept:
            continue
        else:
            with _try_lock(envs_dir / LOCKS / f"{match.group(1)}.lock") as locked:
                if locked and entry.name == match.group(1):
                    _discard(entry)
                    removed.append(entry.name)
                elif locked:
                    _remove_tree(entry)
    return removed


# -- building ------------------------------------------------------------------


async def _build(req: EnvRequest, key: str, envs_dir: Path, uv: _Uv, timeout_s: float) -> Env:
    """Build ``key`` in a staging directory and rename it into place; clean up on failure."""
    started = time.monotonic()
    log.info("env %s: building (%s)", key[:12], req.wheel_dir or "package index")
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{key}-", dir=envs_dir))
    try:
        os.chmod(staging, 0o755)
        try:
            async with asyncio.timeout(timeout_s):
                meta = await _populate(req, key, staging, uv)
        except TimeoutError as exc:
            raise EnvBuildError(
                f"env {key[:12]}: build timed out after {timeout_s:g} s (uv was killed); "
                "check the package index or raise the timeout"
            ) from exc
        (staging / META).write_bytes(msgspec.json.format(msgspec.json.encode(meta)) + b"\n")
        _make_read_only(staging)
        os.rename(staging, envs_dir / key)
    except BaseException:
        _remove_tree(staging)
        raise
    log.info(
        "env %s: built in %.2f s, codec %s, loop %s",
        key[:12],
        time.monotonic() - started,
        meta.codec,
        meta.loop,
    )
    return _env(envs_dir / key, meta)


async def _populate(req: EnvRequest, key: str, staging: Path, uv: _Uv) -> EnvMeta:
    """Create the venv in ``staging`` and install ``req``; return its metadata."""
    python = _absolute(req.python)
    # Built under a temporary name, used under another: --relocatable makes
    # scripts and activation relative, pyvenv.cfg names only the base
    # interpreter, and importlib corrects a .pyc's recorded source path on load.
    await uv.run(
        "creating the virtualenv",
        ["venv", "--python", python, "--relocatable", "--no-python-downloads", str(staging)],
    )
    venv_python = str(staging / "bin" / "python")
    pins, notes = await _resolve(req, staging, venv_python, uv)
    if pins:
        lock = staging / "drivebay-lock.txt"
        lines = pins if req.wheel_dir is None else hashed_pins(pins, req.wheels)
        lock.write_text("".join(f"{line}\n" for line in lines))
        hashes = [] if req.wheel_dir is None else ["--require-hashes"]
        args = ["pip", "install", "--python", venv_python, "-r", str(lock), *hashes]
        # Copies, not hard links into uv's cache: making the env read-only must
        # not touch the cache's files, and cleaning the cache must not touch envs.
        args += ["--link-mode", "copy", "--compile-bytecode", *_sources(req)]
        await uv.run("installing dependencies", args)
    packages = _installed(staging)
    return EnvMeta(
        key=key,
        codec=_codec(packages),
        msgspec=notes["msgspec"],
        uvloop=notes["uvloop"],
        loop="uvloop" if "uvloop" in packages else "asyncio",
        packages=packages,
        python=python,
        dependencies=list(req.dependencies),
        wheels=dict(sorted(req.wheels.items())),
        protocol_version=req.protocol_version,
    )


async def _resolve(
    req: EnvRequest, staging: Path, venv_python: str, uv: _Uv
) -> tuple[list[str], dict[str, str]]:
    """Pin the whole dependency tree; say how each accelerator came in (or why not).

    With ``lib/``, a shipped accelerator wheel the interpreter cannot use
    (another Python or platform) leaves the driver on the stdlib codec and
    loop instead of failing it: one more resolution without the accelerators,
    never more; when that one fails too, the driver's own dependencies are at
    fault, and its error is raised. From the index a failure is raised as it
    is: it may be the network, and an env built without the accelerators
    would be kept under the same key for good.
    """
    addable = addable_accelerators(req)
    notes = {name: accelerator_note(req, name) for name in ACCELERATORS if name not in addable}
    plain = requirements(req, with_accelerators=False)
    if not addable:
        return await _compile(req, plain, staging, venv_python, uv), notes
    wanted = requirements(req, with_accelerators=True)
    try:
        pins = await _compile(req, wanted, staging, venv_python, uv)
    except EnvBuildError as exc:
        if req.wheel_dir is None:
            raise
        log.warning("env: lib/ %s unusable, using the stdlib: %s", " and ".join(addable), exc)
        pins = await _compile(req, plain, staging, venv_python, uv)
        return pins, {**notes, **{name: f"unusable: {exc}" for name in addable}}
    return pins, {**notes, **{name: "added by the builder" for name in addable}}


async def _compile(
    req: EnvRequest, wanted: list[str], staging: Path, venv_python: str, uv: _Uv
) -> list[str]:
    """``name==version`` for every distribution ``wanted`` needs."""
    if not wanted:
        return []
    source = staging / "drivebay-requirements.in"
    pinned = staging / "drivebay-pins.txt"
    source.write_text("".join(f"{line}\n" for line in wanted))
    where = req.wheel_dir or "the package index"
    args = ["pip", "compile", "--python", venv_python, "--no-header", "--no-annotate"]
    args += ["--quiet", "-o", str(pinned), str(source), *_sources(req)]
    await uv.run(f"resolving {', '.join(wanted)} from {where}", args)
    lines = (line.strip() for line in pinned.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _sources(req: EnvRequest) -> list[str]:
    # Wheels only, from lib/ and from the index alike: building a source
    # distribution runs its setup code, which would run as the daemon's user,
    # outside the driver's limits.
    if req.wheel_dir is None:
        return ["--no-build"]
    wheel_dir = _absolute(req.wheel_dir)
    return ["--no-index", "--find-links", wheel_dir, "--offline", "--no-build"]


def _absolute(path: Path) -> str:
    return os.path.abspath(path)


def _installed(root: Path) -> dict[str, str]:
    """{canonical name: version} of every distribution in ``root``'s site-packages."""
    packages = {}
    for metadata in sorted(root.glob("lib/python*/site-packages/*.dist-info/METADATA")):
        with metadata.open(encoding="utf-8", errors="replace") as file:
            headers = email.parser.HeaderParser().parse(file)
        packages[canonical_name(headers["Name"] or "")] = headers["Version"] or ""
    return packages


def _codec(packages: dict[str, str]) -> str:
    """The codec the child's runtime will pick (``protocol.child_codec``'s rule)."""
    release = re.match(r"(\d+)\.(\d+)", packages.get("msgspec", ""))
    usable = release is not None and (int(release[1]), int(release[2])) >= (0, 18)
    return "msgspec" if usable else "stdlib"


# -- running uv ----------------------------------------------------------------


class _Uv:
    """Runs uv for one build: its own settings only, the build lock inherited."""

    def __init__(self, cache: Path | None, lock_fd: int, cwd: Path) -> None:
        from uv import find_uv_bin  # the wheel's binary, not whatever PATH holds

        self.binary = str(find_uv_bin())
        self.common = ["--no-config", "--no-progress", "--color", "never"]
        if cache is not None:
            self.common += ["--cache-dir", str(cache)]
        self.lock_fd = lock_fd
        self.cwd = cwd
        self.env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("UV_", "PYTHON", "VIRTUAL_ENV", "CONDA_")) or name in _UV_VARS
        }

    async def run(self, step: str, args: list[str]) -> None:
        """Run ``uv args``; raise EnvBuildError with uv's message when it fails.

        uv runs in its own session: on timeout or cancellation its whole
        process group is killed, and always reaped before this returns.
        """
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                *args,
                *self.common,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                pass_fds=(self.lock_fd,),
                start_new_session=True,
            )
        except OSError as exc:
            raise EnvBuildError(f"{step} failed: cannot run uv ({exc})") from exc
        try:
            output, _ = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            detail = uv_message(output.decode(errors="replace"))
            raise EnvBuildError(f"{step} failed (uv exit {proc.returncode}): {detail}")


def uv_message(output: str) -> str:
    """uv's own error on one line: from its ``error:`` line on, else its last lines."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if starts:
        lines = lines[starts[0] :]
    else:
        lines = [line for line in lines if not line.startswith(_NOISE)][-6:]
    text = " ".join(lines).removeprefix("error: ")
    return text[:2000] or "uv printed no error message"


# -- the tree on disk ----------------------------------------------------------


def _load(path: Path) -> Env | None:
    """The environment at ``path`` if it is complete (its metadata readable)."""
    try:
        meta = msgspec.json.decode((path / META).read_bytes(), type=EnvMeta)
    except (OSError, msgspec.DecodeError):
        return None
    return _env(path, meta)


def _env(path: Path, meta: EnvMeta) -> Env:
    return Env(path, path / "bin" / "python", meta.key, meta.codec, meta.loop, dict(meta.packages))


def _discard_leftovers(envs_dir: Path, key: str) -> None:
    """Under ``key``'s lock: drop staging dirs of dead builds and a corrupt final dir."""
    for stale in envs_dir.glob(f".staging-{key}-*"):
        log.info("env %s: removing %s left by an interrupted build", key[:12], stale.name)
        _remove_tree(stale)
    if (envs_dir / key).exists():
        _discard(envs_dir / key)


def _discard(path: Path) -> None:
    """Remove a tree, first renaming it so no half-removed tree keeps its name.

    The new name is a sibling: moving a read-only directory to another parent
    would need its write bit.
    """
    trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(4)}")
    os.rename(path, trash)
    _remove_tree(trash)


def _make_read_only(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) & ~0o222)
    os.chmod(root, 0o555)


def _remove_tree(root: Path) -> None:
    """Remove ``root`` even where ``_make_read_only`` took the write bits.

    Never raises (it also runs while another error propagates); what cannot
    be removed is logged, and ``collect_garbage`` tries again later.
    """
    for dirpath, _, _ in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(root, ignore_errors=True)
    if os.path.lexists(root):
        log.warning("could not remove %s entirely", root)


# -- the per-key build lock ----------------------------------------------------


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _flock_now(path: Path) -> int | None:
    """An fd holding ``path``'s exclusive flock if it is free right now, else None."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            return None
        raise
    return fd


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """Hold ``path``'s flock if it is free right now; yield whether it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _flock_now(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


class _LockWaiter:
    """A daemon thread blocking in flock on behalf of the event loop.

    The thread opens its own file, so the lock is the thread's until handed
    over; if the caller gives up first (timeout, cancellation) the thread
    releases the lock the moment it gets it. A daemon thread rather than the
    loop's executor: a wait as long as someone else's build must neither hold
    an executor worker nor delay the loop's shutdown.
    """

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.loop = loop
        self.acquired: asyncio.Future[None] = loop.create_future()
        self.mutex = threading.Lock()
        self.fd: int | None = None
        self.abandoned = False

    def run(self) -> None:
        try:
            fd = _open_lock(self.path)
        except OSError as exc:
            self._deliver(exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            self._deliver(exc)
            return
        with self.mutex:
            if self.abandoned:
                os.close(fd)
                return
            self.fd = fd
        self._deliver(None)

    def _deliver(self, error: OSError | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self._settle, error)
        except RuntimeError:  # the loop is closed: nobody will take the lock
            self.abandon()

    def _settle(self, error: OSError | None) -> None:
        if self.acquired.done():
            return
        if error is None:
            self.acquired.set_result(None)
        else:
            self.acquired.set_exception(error)

    def abandon(self) -> None:
        with self.mutex:
            self.abandoned = True
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    def take(self) -> int:
        with self.mutex:
            fd, self.fd = self.fd, None
        assert fd is not None, "the lock is taken once, after it was acquired"
        return fd


async def _lock(path: Path, timeout_s: float) -> int:
    """An fd holding ``path``'s exclusive flock (close it to release).

    Raises EnvBuildError when another holder keeps it past ``timeout_s``.
    """
    fd = _flock_now(path)
    if fd is not None:
        return fd
    waiter = _LockWaiter(path, asyncio.get_running_loop())
    threading.Thread(target=waiter.run, name=f"flock {path.stem[:12]}", daemon=True).start()
    try:
        async with asyncio.timeout(timeout_s):
            await waiter.acquired
    except BaseException as exc:
        waiter.abandon()
        if isinstance(exc, TimeoutError):
            raise EnvBuildError(
                f"env {path.stem[:12]}: waited over {timeout_s:g} s for another build of it"
            ) from exc
        raise
    return waiter.take()
