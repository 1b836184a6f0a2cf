"""``drivebay build SRC [-o DIR] [--python X.Y] [--platform TAG]``: a bundle zip
that installs offline, the same bytes from the same input.

1. The manifest's ``dependencies``, plus the accelerators the env builder
   would add (msgspec, uvloop: ``sandbox.env_key.ACCELERATORS``), are
   resolved for the target interpreter and platform by
   ``uv pip compile --generate-hashes`` into ``requirements.lock`` (kept in
   SRC and reused while its inputs are unchanged; ``--upgrade`` resolves
   again). An accelerator without a wheel for the target is left out, and
   said so: the driver runs there, slower.
2. ``pip download --only-binary=:all: --no-deps --require-hashes`` fetches
   exactly the locked wheels into ``lib/``; wheels SRC already has in its
   ``lib/`` (a private package) are offered to both as ``--find-links``.
3. The source (without ``lib/``, ``tests/``, ``dist/``, ``build/``, hidden
   files and bytecode), the lock and ``lib/`` are written as
   ``NAME-VERSION.zip`` by ``bundle_zip`` (fixed order, time, modes), then
   read back by the daemon's own reader (``read_bundle``: layout, hostile
   input, manifest, limits); only a zip it accepts is put in place.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from drivebay.author.bundle_zip import write_zip
from drivebay.protocol.errors import DrivebayError
from drivebay.sandbox.bundle_errors import reject
from drivebay.sandbox.bundle_layout import LIB_DIR
from drivebay.sandbox.bundle_reader import read_bundle
from drivebay.sandbox.env_key import ACCELERATORS, dependency_name, wheel_project
from drivebay.sandbox.envs import uv_message
from drivebay.sandbox.manifest import parse_manifest
from drivebay.sandbox.manifest_schema import MANIFEST_FILE, Manifest

LOCK_FILE: Final = "requirements.lock"
LEFT_OUT: Final = frozenset({LIB_DIR, "tests", "dist", "build", LOCK_FILE})
STEP_TIMEOUT_S: Final = 600
_LOCK_HEADER: Final = "# drivebay build lock: delete it, or build with --upgrade, to resolve again"


class BuildError(DrivebayError):
    """The bundle could not be built; the message says what to fix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="the driver's source directory")
    parser.add_argument("-o", "--output", metavar="DIR", help="where to write (default SRC/dist)")
    parser.add_argument("--python", metavar="X.Y", help="target Python (default: this one)")
    parser.add_argument(
        "--platform", metavar="TAG", help="target PEP 425 platform tag (default: this machine)"
    )
    parser.add_argument("--upgrade", action="store_true", help="resolve again, ignore the lock")
    parser.add_argument("--index-url", metavar="URL", help="the package index to use")
    parser.add_argument(
        "--find-links", metavar="DIR", action="append", default=[], help="also look for wheels here"
    )
    parser.add_argument("--no-index", action="store_true", help="use --find-links only")


def run(args: argparse.Namespace) -> int:
    source = Path(args.src)
    target = Target.parse(args.python, args.platform)
    sources = Sources(args.index_url, tuple(args.find_links), args.no_index)
    output = Path(args.output) if args.output else source / "dist"
    built = build(source, output, target, sources, upgrade=args.upgrade)
    print(f"built {built.zip} ({built.summary})")
    for note in built.notes:
        print(f"note: {note}")
    return 0


# -- the target ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The interpreter and platform the wheels are for."""

    python: str  # "3.12"
    platform: str | None  # a PEP 425 platform tag; None: this machine

    @classmethod
    def parse(cls, python: str | None, platform: str | None) -> Target:
        """Raises ``BuildError`` for a malformed version or an unknown tag."""
        if python is None:
            python = f"{sys.version_info.major}.{sys.version_info.minor}"
        if not re.fullmatch(r"3\.[0-9]{1,2}", python):
            raise BuildError(f"--python {python!r} is not a Python version; write one like 3.12")
        target = cls(python, platform)
        target.uv_platform()  # refuse an unknown tag before any work
        return target

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def uv_platform(self) -> str | None:
        """uv's ``--python-platform`` for the tag (uv names targets, not tags)."""
        tag = self.platform
        if tag is None:
            return None
        if found := re.fullmatch(r"manylinux_2_([0-9]+)_(x86_64|aarch64)", tag):
            glibc, arch = int(found[1]), found[2]
            known = [v for v in (17, 28, *range(31, 41)) if v <= glibc]
            if known:
                return f"{arch}-manylinux_2_{known[-1]}"
        if found := re.fullmatch(r"manylinux2014_(x86_64|aarch64)", tag):
            return f"{found[1]}-manylinux2014"
        if found := re.fullmatch(r"musllinux_1_[0-9]+_(x86_64|aarch64)", tag):
            return f"{found[1]}-unknown-linux-musl"
        if found := re.fullmatch(r"linux_(x86_64|aarch64)", tag):
            return f"{found[1]}-unknown-linux-gnu"
        if found := re.fullmatch(r"macosx_[0-9]+_[0-9]+_(x86_64|arm64|universal2)", tag):
            return "x86_64-apple-darwin" if found[1] == "x86_64" else "aarch64-apple-darwin"
        windows = {"win_amd64": "x86_64", "win_arm64": "aarch64", "win32": "i686"}
        if tag in windows:
            return f"{windows[tag]}-pc-windows-msvc"
        raise BuildError(
            f"--platform {tag!r} is not a platform tag drivebay build knows; use one like "
            "manylinux_2_17_x86_64, manylinux_2_28_aarch64, musllinux_1_2_x86_64, "
            "macosx_11_0_arm64 or win_amd64"
        )

    def pip_platforms(self) -> list[str]:
        """The tags pip must accept: a manylinux or musllinux tag with every
        older one it implies (pip matches tags exactly)."""
        tag = self.platform
        if tag is None:
            return []
        if found := re.fullmatch(r"manylinux_2_([0-9]+)_(\w+)", tag):
            glibc, arch = int(found[1]), found[2]
            tags = [f"manylinux_2_{v}_{arch}" for v in range(glibc, 4, -1)]
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
            tags += [f"{name}_{arch}" for v, name in legacy.items() if v <= glibc]
            return tags
        if found := re.fullmatch(r"musllinux_1_([0-9]+)_(\w+)", tag):
            return [f"musllinux_1_{v}_{found[2]}" for v in range(int(found[1]), -1, -1)]
        return [tag]

    def describe(self) -> str:
        return f"Python {self.python} on {self.platform or 'this machine'}"


@dataclass(frozen=True)
class Sources:
    """Where packages come from (None and empty: uv's and pip's own settings)."""

    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    def options(self, extra_links: Sequence[Path] = ()) -> list[str]:
        found: list[str] = []
        if self.index_url:
            found += ["--index-url", self.index_url]
        for link in (*self.find_links, *map(str, extra_links)):
            found += ["--find-links", os.path.abspath(link)]
        if self.no_index:
            found.append("--no-index")
        return found


# -- the build ----------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    zip: Path
    summary: str
    notes: tuple[str, ...]


def build(
    source: Path, output: Path, target: Target, sources: Sources, *, upgrade: bool = False
) -> Built:
    """Build ``source`` into ``output/NAME-VERSION.zip``; return what was built.

    Raises ``BundleError`` for a source the daemon would refuse and
    ``BuildError`` when resolving or fetching fails (uv's or pip's words).
    """
    manifest = _manifest(source)
    files = source_files(source)
    own_lib = [source / LIB_DIR] if (source / LIB_DIR).is_dir() else []
    lock, notes = locked(source, manifest, target, sources, own_lib, upgrade)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".drivebay-build-", dir=output) as scratch:
        wheels = fetch(lock, target, sources, own_lib, Path(scratch) / LIB_DIR)
        files[LOCK_FILE] = lock.encode()
        for wheel in wheels:
            files[f"{LIB_DIR}/{wheel.name}"] = wheel.read_bytes()
        name = f"{manifest.name}-{manifest.version}.zip"
        staged = Path(scratch) / name
        write_zip(staged, files)
        read_bundle(staged)  # the daemon's reader: refused here, never placed
        final = output / name
        os.replace(staged, final)
    names = ", ".join(_pin_names(lock)) or "none"
    count = f"{len(wheels)} wheel{'' if len(wheels) == 1 else 's'}"
    summary = f"{len(files)} files; {count} for {target.describe()}: {names}"
    return Built(final, summary, tuple(notes))


def _manifest(source: Path) -> Manifest:
    try:
        text = (source / MANIFEST_FILE).read_bytes()
    except OSError as exc:
        raise BuildError(
            f"{source}: no readable {MANIFEST_FILE} ({exc.strerror}); "
            "give the driver's source directory (drivebay new writes one)"
        ) from exc
    return parse_manifest(text, source.name)


def source_files(source: Path) -> dict[str, bytes]:
    """The files of ``source`` that go into the bundle, by relative path.

    Left out: ``LEFT_OUT`` at the top, hidden files and folders, bytecode.
    Raises ``BundleError`` for a link or a special file, as the daemon would.
    """
    files: dict[str, bytes] = {}
    for folder, subdirs, names in os.walk(source):
        relative = Path(folder).relative_to(source)
        top = relative == Path(".")
        subdirs[:] = sorted(
            d
            for d in subdirs
            if not (d.startswith(".") or d == "__pycache__" or (top and d in LEFT_OUT))
        )
        for entry in [*subdirs, *names]:
            path = Path(folder) / entry
            rel = (relative / entry).as_posix()
            if path.is_symlink():
                reject(source.name, rel, "is a symbolic link; put the file itself there")
        for name in names:
            if (
                name.startswith(".")
                or name.endswith((".pyc", ".pyo"))
                or (top and name in LEFT_OUT)
            ):
                continue
            path = Path(folder) / name
            if not path.is_file():
                reject(source.name, (relative / name).as_posix(), "is not a regular file")
            files[(relative / name).as_posix()] = path.read_bytes()
    return files


# -- resolving ------------------------------------------------------------------------


def wanted(manifest: Manifest) -> tuple[list[str], list[str]]:
    """The driver's requirements, and the accelerators it does not name itself."""
    declared = {dependency_name(dep) for dep in manifest.dependencies}
    extra = [ACCELERATORS[name] for name in ACCELERATORS if name not in declared]
    return list(manifest.dependencies), extra


def locked(
    source: Path,
    manifest: Manifest,
    target: Target,
    sources: Sources,
    own_lib: Sequence[Path],
    upgrade: bool,
) -> tuple[str, list[str]]:
    """The lock's text (SRC's own while its inputs match) and notes to print."""
    requirements, accelerators = wanted(manifest)
    inputs = _lock_inputs(target, [*requirements, *accelerators])
    path = source / LOCK_FILE
    if not upgrade and path.is_file():
        text = path.read_text()
        if text.startswith(inputs):
            return text, []
    body, notes = resolve(requirements, accelerators, target, sources, own_lib)
    text = inputs + body
    path.write_text(text)
    return text, notes


def _lock_inputs(target: Target, requirements: list[str]) -> str:
    return (
        f"{_LOCK_HEADER}\n# python: {target.python}\n# platform: {target.platform or 'host'}\n"
        f"# requirements: {', '.join(requirements) or '-'}\n"
    )


def resolve(
    requirements: list[str],
    accelerators: list[str],
    target: Target,
    sources: Sources,
    own_lib: Sequence[Path],
) -> tuple[str, list[str]]:
    """The hashed pins of ``requirements`` plus each accelerator the target
    has a wheel of; notes on those left out."""
    try:
        return _compile([*requirements, *accelerators], target, sources, own_lib), []
    except BuildError:
        if not accelerators:
            raise
    body = _compile(requirements, target, sources, own_lib)  # the driver's own fail: raised
    kept: list[str] = []
    notes: list[str] = []
    for accelerator in accelerators:
        try:
            _compile([*requirements, *kept, accelerator], target, sources, own_lib)
        except BuildError:
            notes.append(
                f"{dependency_name(accelerator)} left out: it has no wheel for "
                f"{target.describe()}; the driver runs there without it, slower"
            )
        else:
            kept.append(accelerator)
    if kept:
        body = _compile([*requirements, *kept], target, sources, own_lib)
    return body, notes


def _compile(
    requirements: list[str], target: Target, sources: Sources, own_lib: Sequence[Path]
) -> str:
    if not requirements:
        return ""
    from uv import find_uv_bin

    with tempfile.TemporaryDirectory(prefix="drivebay-lock-") as scratch:
        wanted_file = Path(scratch) / "requirements.in"
        wanted_file.write_text("".join(f"{line}\n" for line in requirements))
        out = Path(scratch) / "requirements.lock"
        command = [str(find_uv_bin()), "pip", "compile", str(wanted_file), "-o", str(out)]
        command += ["--python-version", target.python, "--generate-hashes", "--no-build"]
        command += ["--no-header", "--no-annotate", "--quiet", "--color", "never"]
        if (platform := target.uv_platform()) is not None:
            command += ["--python-platform", platform]
        command += sources.options(own_lib)
        done = _run(command, f"resolving {', '.join(requirements)}")
        if done.returncode != 0:
            raise BuildError(
                f"resolving {', '.join(requirements)} for {target.describe()} failed: "
                f"{uv_message(done.stdout + done.stderr)}"
            )
        return out.read_text()


def _pin_names(lock: str) -> list[str]:
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", lock, re.MULTILINE)
    return [f"{name} {version}" for name, version in pins]


# -- fetching ---------------------------------------------------------------------------


def fetch(
    lock: str, target: Target, sources: Sources, own_lib: Sequence[Path], into: Path
) -> list[Path]:
    """Download exactly the locked wheels for ``target`` into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    if not _pin_names(lock):
        return []
    lock_file = into.parent / LOCK_FILE
    lock_file.write_text(lock)
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps"]
    command += ["--require-hashes", "-r", str(lock_file), "-d", str(into), "--quiet"]
    command += ["--disable-pip-version-check", "--no-input", "--implementation", "cp"]
    command += ["--python-version", target.python, "--abi", target.abi]
    for tag in target.pip_platforms():
        command += ["--platform", tag]
    command += sources.options(own_lib)
    done = _run(command, "downloading the locked wheels")
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        detail = " ".join(errors or done.stderr.strip().splitlines()[-3:])
        raise BuildError(f"downloading the locked wheels failed: {detail}")
    wheels = sorted(into.glob("*.whl"))
    expected = {dependency_name(pin.split()[0]) for pin in _pin_names(lock)}
    missing = expected - {wheel_project(wheel.name) for wheel in wheels}
    if missing:
        raise BuildError(f"pip gave no wheel of {', '.join(sorted(missing))}; check the index")
    return wheels


def _run(command: list[str], step: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=STEP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{step} took over {STEP_TIMEOUT_S} s; check the package index") from exc
    except OSError as exc:
        raise BuildError(f"{step}: cannot run {command[0]} ({exc.strerror})") from exc
