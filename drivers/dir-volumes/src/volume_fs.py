"""Safe file system steps inside one volume directory.

Paths are split and checked before any system call, then walked one directory
at a time with ``O_NOFOLLOW`` descriptors: a symbolic link planted inside a
volume cannot lead a read or a write outside it, whatever it points to.
Files are written to a temporary name and renamed into place, so a reader
never sees half a file and a link already at the target is replaced, not
followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRefused(ValueError):
    """A path would leave its volume (absolute, ``..``, or through a symbolic link)."""


def tree_size(top: Path) -> tuple[int, int]:
    """``(bytes, files)`` under ``top``, links counted as themselves, never followed."""
    total = files = 0
    pending = [top]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
                    files += 1
    return total, files


def split_path(path: str) -> list[str]:
    """The components of a path inside a volume; PathRefused if it would leave it."""
    if not isinstance(path, str):
        raise TypeError(f"path must be text, not {type(path).__name__}")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if path.startswith("/") or "\0" in path or ".." in parts or not parts:
        raise PathRefused(
            f"path {path!r} is not inside the volume; give a relative path "
            "such as logs/app.txt, without '..' and not starting with '/'"
        )
    return parts


@contextlib.contextmanager
def open_dir(volume: Path, parts: list[str], create: bool) -> Iterator[int | None]:
    """A descriptor for ``volume/parts...``, or None when it is missing and not created."""
    fd: int | None = os.open(volume, _DIR_FLAGS)
    try:
        for index, part in enumerate(parts):
            assert fd is not None
            child = _open_child(fd, part, "/".join(parts[: index + 1]), create)
            os.close(fd)
            fd = child
            if fd is None:
                break
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _open_child(fd: int, part: str, where: str, create: bool) -> int | None:
    """The directory ``part`` below ``fd``; None when missing and not ``create``."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o755, dir_fd=fd)
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    # O_NOFOLLOW | O_DIRECTORY fails on a link with ELOOP or ENOTDIR: tell them apart.
    if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
        raise PathRefused(f"{where!r} is a symbolic link; paths may not go through links")
    raise NotADirectoryError(f"{where!r} is a file, not a directory")


def replace_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to a temporary file, then rename it over ``name``."""
    temporary = f".tmp-{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o644, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def lstat_in(dir_fd: int, name: str, path: str) -> os.stat_result | None:
    """What ``name`` is (never following a link), None if missing; refuses directories."""
    try:
        found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(found.st_mode):
        raise IsADirectoryError(f"{path!r} is a directory; give the path of a file")
    return found


def lstat_existing(dir_fd: int, name: str, path: str) -> os.stat_result:
    found = lstat_in(dir_fd, name, path)
    if found is None:
        raise FileNotFoundError(f"no file {path!r} in this volume")
    return found
