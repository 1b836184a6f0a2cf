"""Run a bundle as the daemon would, without a daemon: for ``check`` and ``testing``.

The same steps the kernel takes, from the same modules: ``read_bundle`` (layout,
hostile input, manifest), ``store_bundle`` (the read-only copy the child runs
from), ``ensure_env`` (the env, shared by key with the daemon's when both use
one envs dir and one interpreter), then a ``DriverProcess`` in the real
sandbox (its own session, PID namespace, rlimits). The store and the runtime
copy live in a private temporary state dir, removed when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from drivebay.kernel.config import Config, LimitSettings, TimeoutSettings
from drivebay.kernel.drivers.process import DriverProcess, EventHandler
from drivebay.kernel.paths import DEFAULT_STATE_DIR
from drivebay.protocol.errors import DriverStartError
from drivebay.protocol.messages import Error, ToKernel
from drivebay.protocol.versions import PROTOCOL_MAX
from drivebay.sandbox.bundle_layout import BundleFiles
from drivebay.sandbox.bundle_reader import ReadLimits, read_bundle
from drivebay.sandbox.bundle_store import StoredBundle, store_bundle
from drivebay.sandbox.envs import Env, EnvRequest, ensure_env
from drivebay.sandbox.runtime_dir import ensure_runtime_dir
from drivebay.sandbox.spawn import SpawnSpec

ENVS_VARIABLE = "DRIVEBAY_ENVS_DIR"


def default_envs_dir() -> Path:
    """``$DRIVEBAY_ENVS_DIR``, else the envs dir of a daemon with default settings
    (``~/.local/state/drivebay/envs``): an env built here is one it reuses."""
    chosen = os.environ.get(ENVS_VARIABLE)
    return Path(chosen).expanduser() if chosen else Path(DEFAULT_STATE_DIR).expanduser() / "envs"


@dataclass(frozen=True)
class RunSettings:
    """What the daemon's config decides about running a driver, for one run."""

    envs_dir: Path = field(default_factory=default_envs_dir)
    uv_cache: Path | None = None
    python: Path = Path(sys.executable)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    read_limits: ReadLimits = field(default_factory=ReadLimits)
    containment: str = "auto"
    log_level: str = "INFO"

    @classmethod
    def from_config(cls, config: Config, driver: str, envs_dir: Path | None) -> RunSettings:
        """The settings a daemon with ``config`` would use for ``driver``.

        The envs dir is ``envs_dir``, else ``$DRIVEBAY_ENVS_DIR``, else the
        config's when this user may write there (a root daemon's is not the
        author's), else ``default_envs_dir()``."""
        own = config.for_driver(driver)
        if envs_dir is None and os.environ.get(ENVS_VARIABLE):
            envs_dir = default_envs_dir()
        if envs_dir is None:
            envs_dir = config.envs_path if _writable(config.envs_path) else default_envs_dir()
        return cls(
            envs_dir=envs_dir,
            uv_cache=config.uv_cache_path,
            python=Path(own.python or config.python or sys.executable),
            timeouts=config.timeouts,
            limits=own.limits or config.limits,
            read_limits=config.bundles.read_limits(),
            containment=config.containment,
            log_level=own.log_level or config.log_level,
        )


def _writable(path: Path) -> bool:
    """Can this user create entries in ``path`` (or create ``path`` itself)?"""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def rlimits(bundle: StoredBundle, defaults: LimitSettings) -> dict[str, int]:
    """The manifest's limits over the config's defaults, as the kernel sets them."""
    return defaults.rlimits(bundle.manifest.limits)


class Scratch:
    """A private state dir for one run: the bundle store, the runtime, work dirs."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="drivebay-run-"))

    def load(self, bundle: Path, limits: ReadLimits) -> StoredBundle:
        """Read and check ``bundle`` as the daemon does, and store it.

        Raises ``BundleError`` (one line) when the daemon would refuse it."""
        return self.store(read_bundle(bundle, limits))

    def store(self, read: BundleFiles) -> StoredBundle:
        """The read-only copy of an already checked bundle that the child runs from."""
        return store_bundle(read, self.path)

    def remove(self) -> None:
        """Remove it all, read-only store copies included."""
        for directory, _, _ in os.walk(self.path):
            with contextlib.suppress(OSError):
                os.chmod(directory, 0o700)
        shutil.rmtree(self.path, ignore_errors=True)


def env_request(bundle: StoredBundle, python: Path) -> EnvRequest:
    """The env the kernel asks for this bundle (``Kernel._env_request``)."""
    return EnvRequest(
        python=python,
        dependencies=tuple(bundle.manifest.dependencies),
        wheels=bundle.wheels,
        wheel_dir=bundle.lib_dir,
        protocol_version=PROTOCOL_MAX,
    )


async def prepare_env(bundle: StoredBundle, settings: RunSettings) -> Env:
    """Build (or reuse) the bundle's env; raises ``EnvBuildError`` with uv's words."""
    request = env_request(bundle, settings.python)
    return await ensure_env(request, settings.envs_dir, uv_cache=settings.uv_cache)


def spawn_spec(
    bundle: StoredBundle, env: Env, scratch: Scratch, settings: RunSettings
) -> SpawnSpec:
    """How the kernel spawns this bundle's driver, but in ``scratch``."""
    manifest = bundle.manifest
    work = scratch.path / "work" / f"{manifest.name}-{manifest.version}"
    work.mkdir(parents=True, exist_ok=True)
    return SpawnSpec(
        python=env.python,
        runtime_dir=ensure_runtime_dir(scratch.path),
        entrypoint=manifest.entrypoint,
        driver=manifest.name,
        version=manifest.version,
        cwd=work,
        src=bundle.src_dir,
        log_level=settings.log_level,
        rlimits=rlimits(bundle, settings.limits),
        containment=settings.containment,
    )


def timeouts_for(bundle: StoredBundle, settings: RunSettings) -> TimeoutSettings:
    """The config's timeouts with the manifest's own call deadline, as the kernel has them."""
    import msgspec

    own = bundle.manifest.limits.call_timeout_s
    return (
        msgspec.structs.replace(settings.timeouts, call_s=float(own)) if own else settings.timeouts
    )


class AuthorProcess(DriverProcess):
    """A ``DriverProcess`` that keeps the traceback of a failed load: the
    daemon logs the one line, an author needs the file and line too."""

    load_traceback = ""

    def _on_message(self, message: ToKernel) -> None:
        if type(message) is Error and message.id == 0:
            self.load_traceback = message.traceback
        super()._on_message(message)


def own_frames(trace: str, root: Path) -> str:
    """``trace`` from the driver's first own frame on, its paths relative to the
    bundle (``src/x.py``), without the runtime's and importlib's frames; ``""``
    for a traceback with no frame of the driver's (a class the runtime refused:
    the error's one line says it all)."""
    lines = trace.rstrip().replace(f"{root}/", "").splitlines()
    if not lines or not lines[0].startswith("Traceback"):
        return "\n".join(lines)
    first = next((i for i, line in enumerate(lines) if line.startswith('  File "src/')), None)
    if first is None:
        return ""
    return "\n".join([lines[0], *lines[first:]])


@dataclass
class Running:
    """One started driver version: its bundle, env and process."""

    bundle: StoredBundle
    env: Env
    process: DriverProcess


@contextlib.asynccontextmanager
async def running(
    bundle: StoredBundle,
    scratch: Scratch,
    settings: RunSettings,
    on_event: EventHandler | None = None,
) -> AsyncIterator[Running]:
    """The bundle's driver started (Hello and Ready), stopped and reaped on exit.

    Raises ``EnvBuildError`` or ``DriverStartError`` (with the child's
    stderr tail; a load error's traceback in its ``__notes__``) when it
    cannot start; the child is reaped then too."""
    env = await prepare_env(bundle, settings)
    spec = spawn_spec(bundle, env, scratch, settings)
    process = AuthorProcess(spec, timeouts_for(bundle, settings), on_event)
    try:
        await process.start()
    except DriverStartError as exc:
        own = own_frames(process.load_traceback, bundle.path)
        if own:
            exc.add_note(own)
        raise
    try:
        yield Running(bundle, env, process)
    finally:
        await process.stop()
