"""What a driver's environment is made of, and the content address naming it.

An ``EnvRequest`` says what the kernel wants (interpreter, dependencies, the
bundle's ``lib/`` wheels with their sha256, protocol version). ``env_key``
hashes all of it, so bundles asking for the same thing share one environment
and any change (a new interpreter build, a different wheel behind the same
file name) gives a new one. This module also turns a request into the
requirement lines ``envs`` hands to uv. No I/O here but running the
interpreter once to learn its version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from drivebay.protocol.errors import EnvBuildError

# Bump when the builder changes what goes into an environment: every key changes.
ENV_LAYOUT = 2  # 2: uvloop added beside msgspec
MSGSPEC_MIN = "msgspec>=0.18"
# What the builder adds to a driver's own dependencies, for the runtime's
# sake: msgspec (the fast codec) and uvloop (the fast event loop). Each is
# optional for the runtime, which falls back to the stdlib codec or loop.
# Project name -> the requirement used with the package index.
ACCELERATORS = {"msgspec": MSGSPEC_MIN, "uvloop": "uvloop"}

_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A dependency becomes a line of a requirements file: it must not smuggle in
# another line or an option (``--index-url``) there.
_UNSAFE_DEP = re.compile(r"[\x00-\x1f\x7f]|(?:^|\s)-")


@dataclass(frozen=True)
class EnvRequest:
    """What the kernel asks of an environment (one driver version's needs)."""

    python: Path  # interpreter to base the venv on
    dependencies: tuple[str, ...]  # PEP 508 strings from the manifest
    wheels: Mapping[str, str]  # {wheel file name: sha256 hex} of lib/; empty without lib/
    wheel_dir: Path | None  # the bundle's lib/ (None: install from the package index)
    protocol_version: int


def canonical_name(name: str) -> str:
    """A distribution name normalized as PEP 503 says (``Pkg_A`` -> ``pkg-a``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_project(filename: str) -> str:
    """The canonical project name of a wheel file name (``pkg_a-1.0-py3-none-any.whl``)."""
    return canonical_name(filename.split("-", 1)[0])


def dependency_name(dependency: str) -> str:
    """The canonical project name a PEP 508 string asks for.

    Raises EnvBuildError when the string is not a requirement (the manifest
    must be fixed).
    """
    match = _NAME.match(dependency)
    if match is None or _UNSAFE_DEP.search(dependency):
        raise EnvBuildError(
            f"dependency {dependency!r} is not a PEP 508 requirement; fix driver.yaml"
        )
    return canonical_name(match.group(1))


@functools.lru_cache(maxsize=32)
def _probe_version(python: str, stamp: tuple[int, int, int]) -> str:
    """``sys.version`` of ``python``; ``stamp`` (inode, mtime, size) re-probes a replaced file."""
    try:
        done = subprocess.run(
            [python, "-I", "-S", "-c", "import sys; print(sys.version)"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvBuildError(f"interpreter {python} cannot run: {exc}") from exc
    if done.returncode != 0:
        raise EnvBuildError(f"interpreter {python} failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def interpreter_version(python: Path) -> str:
    """The full version string of ``python`` (asked once per file in this process).

    Raises EnvBuildError when the interpreter is missing or does not run.
    """
    try:
        st = os.stat(python)
    except OSError as exc:
        raise EnvBuildError(f"interpreter {python} not found: {exc.strerror}") from exc
    return _probe_version(str(python), (st.st_ino, st.st_mtime_ns, st.st_size))


def _check_wheels(wheels: Mapping[str, str]) -> None:
    for filename, sha256 in wheels.items():
        if not filename.endswith(".whl") or "/" in filename or not _SHA256.fullmatch(sha256):
            raise EnvBuildError(f"lib/{filename}: not a wheel with a sha256 hex digest")


def env_key(req: EnvRequest) -> str:
    """The sha256 hex naming the environment ``req`` asks for.

    Covers the interpreter (absolute path and full version), the
    dependencies (order does not matter), every ``lib/`` wheel's name and
    sha256, whether ``lib/`` is used at all, the protocol version and the
    builder's layout. Raises EnvBuildError for a broken request.
    """
    python = Path(os.path.abspath(req.python))
    for dependency in req.dependencies:
        dependency_name(dependency)
    _check_wheels(req.wheels)
    identity = {
        "layout": ENV_LAYOUT,
        "python": [str(python), interpreter_version(python)],
        "dependencies": sorted(req.dependencies),
        "wheels": None if req.wheel_dir is None else sorted(req.wheels.items()),
        "protocol": req.protocol_version,
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def requirements(req: EnvRequest, *, with_accelerators: bool) -> list[str]:
    """The requirement lines to resolve: the driver's, plus the accelerators
    the builder may add when asked (``addable_accelerators``)."""
    lines = list(req.dependencies)
    if with_accelerators:
        for name in addable_accelerators(req):
            lines.append(ACCELERATORS[name] if req.wheel_dir is None else name)
    return lines


def addable_accelerators(req: EnvRequest) -> list[str]:
    """The ``ACCELERATORS`` the builder may add to what the driver asked for:
    those the driver names no version of itself (its pin is never overridden)
    and, with ``lib/``, only those ``lib/`` ships a wheel of (nothing may come
    from elsewhere)."""
    declared = {dependency_name(dep) for dep in req.dependencies}
    shipped = _projects(req.wheels)
    return [
        name
        for name in ACCELERATORS
        if name not in declared and (req.wheel_dir is None or name in shipped)
    ]


def accelerator_note(req: EnvRequest, name: str) -> str:
    """Why the builder did not add accelerator ``name``."""
    declared = any(dependency_name(dep) == name for dep in req.dependencies)
    return "declared by the driver" if declared else "none in lib/"


def _projects(wheels: Iterable[str]) -> set[str]:
    return {wheel_project(filename) for filename in wheels}


def check_lib_covers(req: EnvRequest) -> None:
    """Raise EnvBuildError naming the first dependency ``lib/`` has no wheel for.

    Only plain requirements are checked here (one with a marker may not
    apply, a URL is uv's to judge); uv reports what is missing deeper down.
    """
    if req.wheel_dir is None:
        return
    shipped = _projects(req.wheels)
    for dependency in req.dependencies:
        name = dependency_name(dependency)
        if ";" in dependency or "@" in dependency or name in shipped:
            continue
        raise EnvBuildError(
            f"{req.wheel_dir}: no wheel for {name!r} (dependency {dependency!r}); "
            "add its wheel to lib/, or remove lib/ to install from the package index"
        )


def hashed_pins(pins: Iterable[str], wheels: Mapping[str, str]) -> list[str]:
    """Pin lines (``name==version``) with every ``lib/`` hash of that project.

    uv then accepts only a file whose sha256 the kernel computed: a cached or
    swapped file of the same name fails the install. A pin with no wheel in
    ``lib/`` gets no hash, so uv refuses it and names it.
    """
    by_project: dict[str, list[str]] = {}
    for filename, sha256 in sorted(wheels.items()):
        by_project.setdefault(wheel_project(filename), []).append(sha256)
    lines = []
    for pin in pins:
        hashes = by_project.get(dependency_name(pin), [])
        lines.append(" ".join([pin, *(f"--hash=sha256:{digest}" for digest in hashes)]))
    return lines
