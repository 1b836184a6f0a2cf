"""Read a dropped bundle, a directory or a ``.zip``, into verified memory.

Everything a bundle holds is read once, checked, and kept as bytes: what the
store later writes is exactly what was checked here, whatever happens to the
dropped file meanwhile. The reader trusts nothing in the bundle:

- paths must stay inside the root (no absolute paths, no ``..``), be
  printable and appear once;
- only regular files and directories: links (symlinks in a directory, symlink
  entries in a zip), devices, fifos and sockets are refused; a directory is
  walked with ``O_NOFOLLOW`` file descriptors, so swapping a file for a link
  while it is read does not escape either;
- entry count, bytes per file, bytes in total and (for zips) the compression
  ratio are bounded by ``ReadLimits`` before anything is decompressed;
- a zip's CRCs are verified, so a half-written zip fails with one line.

The layout (``driver.yaml``, ``LICENSE``, ``src/``, optional ``lib/*.whl``)
and the manifest are checked by ``sandbox.bundle_layout``.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from sandbox.bundle_errors import reject
from sandbox.bundle_layout import BundleFiles, check_layout

_MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """Bounds on what one bundle may hold; the kernel's configuration sets them.

    ``max_ratio`` is checked for zip members larger than ``ratio_floor_bytes``
    only: small files of repeated text compress well and cannot hurt.
    """

    max_members: int = 10_000
    max_total_bytes: int = 200 * _MiB
    max_member_bytes: int = 100 * _MiB
    max_ratio: int = 100
    ratio_floor_bytes: int = _MiB


def read_bundle(path: Path, limits: ReadLimits | None = None) -> BundleFiles:
    """The verified files and manifest of the bundle at ``path``.

    Raises ``BundleError`` (one line starting with ``path.name``) when the
    bundle is unreadable, unsafe or invalid; nothing outside it is touched.
    """
    limits = limits or ReadLimits()
    bundle = path.name
    try:
        mode = path.stat().st_mode  # the dropped path itself may be a link
        if stat.S_ISDIR(mode):
            files, dirs = _read_dir(path, bundle, limits)
        elif stat.S_ISREG(mode) and bundle.lower().endswith(".zip"):
            files, dirs = _read_zip(path, bundle, limits)
        else:
            reject(bundle, "not a bundle; a bundle is a directory or a .zip file")
    except OSError as exc:
        reject(bundle, f"cannot read it ({exc.strerror or exc}); check it and drop it again")
    return check_layout(bundle, path, files, dirs)


def human_bytes(count: int) -> str:
    """``count`` as ``200 MiB``, ``64 KiB`` or ``1000 bytes``, whichever is exact."""
    for unit, size in (("GiB", 1 << 30), ("MiB", _MiB), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


class _Budget:
    """Counts entries and bytes against ``ReadLimits`` as they are met."""

    def __init__(self, bundle: str, limits: ReadLimits) -> None:
        self.bundle, self.limits = bundle, limits
        self.members = self.total = 0

    def add_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            limit = self.limits.max_members
            reject(self.bundle, f"more than {limit} entries; a bundle may hold at most {limit}")

    def add_bytes(self, name: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            reject(
                self.bundle,
                name,
                f"larger than {human_bytes(self.limits.max_member_bytes)}, the limit per "
                "file; shrink it or leave it out",
            )
        self.total += size
        if self.total > self.limits.max_total_bytes:
            limit = human_bytes(self.limits.max_total_bytes)
            reject(self.bundle, f"more than {limit} in total; a bundle may hold at most {limit}")


_DRIVE = re.compile(r"[A-Za-z]:")


def member_path(raw: str, bundle: str) -> str:
    """``raw``, a path inside the bundle, normalized (``./a//b`` is ``a/b``).

    Raises ``BundleError`` when it would leave the bundle's root or is not a
    printable name without backslashes.
    """
    if raw.startswith("/") or _DRIVE.match(raw) or ".." in raw.split("/"):
        reject(
            bundle,
            raw,
            "path escapes the bundle; bundles must use relative paths inside their root",
        )
    if "\\" in raw or not raw.isprintable():
        reject(bundle, raw, "name has a backslash, a control character or invalid UTF-8; rename it")
    return "/".join(part for part in raw.split("/") if part not in ("", "."))


_LINK = "is a symbolic link; bundles may not contain links, put the file itself there"
_SPECIAL = "is a device, fifo or socket; bundles hold only regular files and directories"


def _read_dir(root: Path, bundle: str, limits: ReadLimits) -> tuple[dict[str, bytes], set[str]]:
    budget = _Budget(bundle, limits)
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    stack = [(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "")]
    try:
        while stack:
            dir_fd, prefix = stack.pop()
            try:
                names = []
                with os.scandir(dir_fd) as entries:
                    for entry in entries:
                        budget.add_member()
                        names.append(entry.name)
                for name in sorted(names):
                    rel = member_path(prefix + name, bundle)
                    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode):
                        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                        stack.append((os.open(name, flags, dir_fd=dir_fd), rel + "/"))
                        dirs.add(rel)
                    elif stat.S_ISREG(mode):
                        files[rel] = _read_file(dir_fd, name, rel, budget)
                    else:
                        reject(bundle, rel, _LINK if stat.S_ISLNK(mode) else _SPECIAL)
            finally:
                os.close(dir_fd)
    finally:
        for dir_fd, _ in stack:
            os.close(dir_fd)
    return files, dirs


def _read_file(dir_fd: int, name: str, rel: str, budget: _Budget) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:  # swapped for a link since the stat: ELOOP
        reject(budget.bundle, rel, f"{_LINK} ({exc.strerror})")
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a fifo or device
            reject(budget.bundle, rel, _SPECIAL)
        data = stream.read(budget.limits.max_member_bytes + 1)
    budget.add_bytes(rel, len(data))
    return data


def _read_zip(path: Path, bundle: str, limits: ReadLimits) -> tuple[dict[str, bytes], set[str]]:
    budget = _Budget(bundle, limits)
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > limits.max_members:
                budget.members = limits.max_members
                budget.add_member()
            wanted = []
            for info in infos:  # every entry is checked before anything is inflated
                rel = _check_entry(info, budget)
                if rel in files or rel in dirs:
                    reject(
                        bundle, info.filename, "appears twice in the zip; keep one entry per path"
                    )
                if info.filename.endswith("/") or stat.S_ISDIR(info.external_attr >> 16):
                    dirs.add(rel)
                elif not rel:
                    reject(bundle, info.filename, "is not a file name; rename the entry")
                else:
                    files[rel] = b""
                    wanted.append((rel, info))
            for rel, info in wanted:
                files[rel] = _inflate(archive, info)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        ValueError,
        OverflowError,
        NotImplementedError,  # zipfile's word for a damaged version or flags field
    ) as exc:
        reject(bundle, f"incomplete or corrupt zip ({exc}); copy the whole file again")
    dirs.discard("")
    return files, dirs


_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _check_entry(info: zipfile.ZipInfo, budget: _Budget) -> str:
    bundle, limits, raw = budget.bundle, budget.limits, info.filename
    if not raw:  # zipfile cuts names at a NUL byte
        reject(bundle, "an entry has an empty name; rename or remove it")
    rel = member_path(raw, bundle)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        reject(
            bundle, raw, "is a symlink entry; bundles may not contain links, store the file itself"
        )
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        reject(bundle, raw, _SPECIAL)
    if info.flag_bits & 0x1:
        reject(bundle, raw, "is encrypted; bundles must not be encrypted")
    if info.compress_type not in _METHODS:
        reject(bundle, raw, "uses an unsupported compression method; use deflate or store")
    budget.add_bytes(raw, info.file_size)
    size, packed = info.file_size, max(info.compress_size, 1)
    if size > limits.ratio_floor_bytes and size > limits.max_ratio * packed:
        reject(
            bundle,
            raw,
            f"compression ratio {size // packed}:1 is over the limit of {limits.max_ratio}:1 "
            "(a zip bomb?); store it with less compression",
        )
    return rel


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The entry's bytes; zipfile stops at the declared size and checks the CRC."""
    with archive.open(info) as stream:
        data = stream.read()
    if len(data) != info.file_size:
        raise zipfile.BadZipFile(f"{info.filename!r} is shorter than its declared size")
    return data
