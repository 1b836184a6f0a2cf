"""Read a dropped bundle, a directory or a ``.zip``, into verified memory.

Everything a bundle holds is read once, checked, and kept as bytes: what the
store later writes is exactly what was checked here, whatever happens to the
dropped file meanwhile. The reader trusts nothing in the bundle:

- paths must stay inside the root (no absolute paths, no ``..``), be
  printable and appear once (``sandbox.bundle_limits.member_path``);
- only regular files and directories: links (symlinks in a directory, symlink
  entries in a zip), devices, fifos and sockets are refused; a directory is
  walked with ``O_NOFOLLOW`` file descriptors, so swapping a file for a link
  while it is read does not escape either;
- entry count, folder depth, bytes per file, bytes in total and (for zips)
  the compression ratio are bounded by ``ReadLimits`` before anything is
  decompressed; a zip declaring too many entries is refused before its
  central directory is parsed (``sandbox.zip_end``);
- a zip's CRCs are verified, so a half-written zip fails with one line.

The layout (``driver.yaml``, ``LICENSE``, ``src/``, optional ``lib/*.whl``)
and the manifest are checked by ``sandbox.bundle_layout``.
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
import zlib
from pathlib import Path

from drivebay.protocol.errors import BundleError, DrivebayError, KernelError
from drivebay.sandbox.bundle_errors import reject, shown
from drivebay.sandbox.bundle_layout import BundleFiles, check_layout
from drivebay.sandbox.bundle_limits import Budget, ReadLimits
from drivebay.sandbox.zip_end import declared_entries

__all__ = ["TRANSIENT_ERRNOS", "ReadLimits", "read_bundle", "read_failure"]


def read_bundle(path: Path, limits: ReadLimits | None = None) -> BundleFiles:
    """The verified files and manifest of the bundle at ``path``.

    Raises ``BundleError`` (one line starting with ``path.name``) when the
    bundle is unreadable, unsafe or invalid; nothing outside it is touched.
    Raises ``KernelError`` when reading failed for a reason of the host's
    (``read_failure``): the same bundle may read fine later.
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
        raise read_failure(bundle, exc) from exc
    return check_layout(bundle, path, files, dirs)


# Failures of the host, not of the bundle: reading it again later may work.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.EBUSY,
        errno.EAGAIN,
        errno.EINTR,
        errno.ENOMEM,
        errno.ENOBUFS,
        errno.ENFILE,
        errno.EMFILE,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ETIMEDOUT,
        errno.ESTALE,
    }
)


def read_failure(bundle: str, exc: OSError) -> DrivebayError:
    """The error for a bundle that could not be read: ``KernelError`` when the
    host is at fault (``TRANSIENT_ERRNOS``: the kernel reads it again later),
    else ``BundleError`` (permissions, a part that vanished: final until the
    bundle changes)."""
    reason = exc.strerror or str(exc)
    if exc.errno in TRANSIENT_ERRNOS:
        return KernelError(f"{shown(bundle)}: cannot read it now ({reason})")
    return BundleError(f"{shown(bundle)}: cannot read it ({reason}); check it and drop it again")


_LINK = "is a symbolic link; bundles may not contain links, put the file itself there"
_SPECIAL = "is a device, fifo or socket; bundles hold only regular files and directories"


def _read_dir(root: Path, bundle: str, limits: ReadLimits) -> tuple[dict[str, bytes], set[str]]:
    budget = Budget(bundle, limits)
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _walk(root_fd, "", budget, files, dirs)
    finally:
        os.close(root_fd)
    return files, dirs


def _walk(
    dir_fd: int, prefix: str, budget: Budget, files: dict[str, bytes], dirs: set[str]
) -> None:
    """Read the directory open as ``dir_fd`` into ``files`` and ``dirs``.

    Recursion holds one fd per level, and levels are bounded by ``max_depth``.
    """
    names = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            budget.add_member()
            names.append(entry.name)
    for name in sorted(names):
        rel = budget.check_path(prefix + name)
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            dirs.add(rel)
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            child_fd = _open_swapped(name, flags, dir_fd, rel, budget.bundle)
            try:
                _walk(child_fd, rel + "/", budget, files, dirs)
            finally:
                os.close(child_fd)
        elif stat.S_ISREG(mode):
            files[rel] = _read_file(dir_fd, name, rel, budget)
        else:
            reject(budget.bundle, rel, _LINK if stat.S_ISLNK(mode) else _SPECIAL)


def _open_swapped(name: str, flags: int, dir_fd: int, rel: str, bundle: str) -> int:
    """``os.open`` with ``O_NOFOLLOW``, naming a link swapped in since the stat."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            reject(bundle, rel, f"{_LINK} ({exc.strerror})")
        raise


def _read_file(dir_fd: int, name: str, rel: str, budget: Budget) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = _open_swapped(name, flags, dir_fd, rel, budget.bundle)
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a fifo or device
            reject(budget.bundle, rel, _SPECIAL)
        data = stream.read(budget.limits.max_member_bytes + 1)
    budget.add_bytes(rel, len(data))
    return data


def _read_zip(path: Path, bundle: str, limits: ReadLimits) -> tuple[dict[str, bytes], set[str]]:
    budget = Budget(bundle, limits)
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    declared = declared_entries(path)
    if declared is not None and declared > limits.max_members:
        Budget(bundle, limits).add_member(declared)  # refused before zipfile parses them all
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            budget.add_member(len(infos))
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


def _check_entry(info: zipfile.ZipInfo, budget: Budget) -> str:
    bundle, limits, raw = budget.bundle, budget.limits, info.filename
    if not raw:  # zipfile cuts names at a NUL byte
        reject(bundle, "an entry has an empty name; rename or remove it")
    rel = budget.check_path(raw)
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
