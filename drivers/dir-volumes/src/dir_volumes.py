"""Directories as volumes: one base directory per resource, one quota for all its volumes.

A volume is a directory ``<root>/<name>``. Entries of ``root`` whose names are
not volume names (``.snapshots``, ``lost+found``) are not volumes and are left
alone. Usage is the apparent size (``st_size``) of every file and link in the
volumes, measured when asked, so files written by other means count too.

Paths inside a volume are relative and ``/``-separated; ``volume_fs`` refuses
those that would leave the volume (absolute, ``..``, through a symbolic link).

The operations are sync: the driver runtime runs them in a worker thread.

Each resource keeps, in memory, what was asked of it (``history``): a count
per operation and the latest operations with their outcome. It survives
upgrades and property changes: the old instance hands it over (``handoff``)
and the new one takes it (``takeover``), converting it from the version that
wrote it; a driver restart starts it afresh.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from volume_fs import (
    PathRefused,
    lstat_existing,
    lstat_in,
    open_dir,
    replace_file,
    split_path,
    tree_size,
)

VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MiB = 1 << 20
VERSION = os.environ.get("DRIVEBAY_VERSION", "")
RECENT = 50  # operations kept in a resource's history
F = TypeVar("F", bound=Callable[..., Any])


def recorded(operation: F) -> F:
    """Count the operation and keep it among the resource's recent ones."""

    @functools.wraps(operation)
    def run(self: DirVolumes, *args: Any, **kwargs: Any) -> Any:
        outcome = "ok"
        try:
            return operation(self, *args, **kwargs)
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.counts[operation.__name__] = self.counts.get(operation.__name__, 0) + 1
            self.recent.append([operation.__name__, time.time(), outcome])

    return run  # type: ignore[return-value]


class QuotaExceeded(Exception):
    """A write would take the resource's volumes over ``quota_mb``; nothing was written."""


def human(count: int) -> str:
    """``1.5 MiB``, ``12.0 KiB`` or ``100 bytes``."""
    if count >= MiB:
        return f"{count / MiB:.1f} MiB"
    if count >= 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count} bytes"


class DirVolumes:
    """The volumes under ``root``, sharing a quota of ``quota_mb`` MiB."""

    def __init__(self, resource_id: str, properties: dict[str, Any]) -> None:
        self.resource_id = resource_id
        root = properties.get("root")
        if not isinstance(root, str) or not os.path.isabs(root):
            raise ValueError(
                f"root must be an absolute directory path such as /srv/volumes, got {root!r}; "
                "fix the resource's properties"
            )
        quota = properties.get("quota_mb")
        if isinstance(quota, bool) or not isinstance(quota, int | float) or not quota > 0:
            raise ValueError(
                f"quota_mb must be a number of MiB above 0, got {quota!r}; "
                "fix the resource's properties"
            )
        self.root = Path(root)
        self.quota_bytes = int(quota * MiB)
        # In memory only, handed from version to version (handoff, takeover).
        self.counts: dict[str, int] = {}
        self.recent: collections.deque[list[Any]] = collections.deque(maxlen=RECENT)
        self.since = time.time()
        self.versions = [VERSION]  # every version that served this resource, in order

    def attach(self) -> None:
        """Create ``root`` if needed. Raises when it cannot be a writable directory."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot use {self.root} as root ({exc.strerror}); "
                "choose a directory the driver's user may create and write",
            ) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable; choose another root")

    async def handoff(self) -> dict[str, Any]:
        """This resource moves to another instance: hand over its history."""
        return {
            "counts": dict(self.counts),
            "recent": list(self.recent),
            "since": self.since,
            "versions": self.versions,
        }

    async def takeover(self, state: dict[str, Any], from_version: str) -> None:
        """Instead of ``attach``: take the resource and the history ``from_version`` handed over."""
        await asyncio.to_thread(self.attach)  # the properties may have changed: check root
        # One layout so far; a later version converts here from older ones.
        self.counts = {str(name): int(count) for name, count in state["counts"].items()}
        self.recent.extend(state["recent"])
        self.since = float(state["since"])
        versions = [str(v) for v in state["versions"]]
        self.versions = versions if versions[-1:] == [VERSION] else [*versions, VERSION]

    # -- history ------------------------------------------------------------------

    def history(self, limit: int = 10) -> dict[str, Any]:
        """What was asked of this resource since it was attached: counts, latest operations."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a whole number of operations, got {limit!r}")
        recent = list(self.recent)[-limit:] if limit else []
        return {
            "counts": dict(sorted(self.counts.items())),
            "recent": [{"operation": op, "at": at, "outcome": out} for op, at, out in recent],
            "since": self.since,
            "versions": list(self.versions),
        }

    # -- volumes ------------------------------------------------------------------

    @recorded
    def create_volume(self, name: str) -> dict[str, Any]:
        """Create an empty volume. FileExistsError if it already exists."""
        path = self._path(name)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            raise FileExistsError(
                f"volume {name!r} already exists; pick another name or delete it first"
            ) from None
        return {"name": name, "path": str(path)}

    @recorded
    def delete_volume(self, name: str) -> dict[str, Any]:
        """Delete a volume and everything in it; returns what was freed."""
        path = self._existing(name)
        size, files = tree_size(path)
        shutil.rmtree(path)
        return {"name": name, "freed_bytes": size, "files": files}

    @recorded
    def list_volumes(self) -> list[dict[str, Any]]:
        """Every volume with its size in bytes and its number of files."""
        volumes = []
        for name in self._names():
            size, files = tree_size(self.root / name)
            volumes.append({"name": name, "bytes": size, "files": files})
        return volumes

    @recorded
    def usage(self) -> dict[str, Any]:
        """Bytes used by all the volumes, against the quota."""
        used = self._used()
        return {
            "used_bytes": used,
            "quota_bytes": self.quota_bytes,
            "free_bytes": max(0, self.quota_bytes - used),
            "volumes": len(self._names()),
        }

    # -- files --------------------------------------------------------------------

    @recorded
    def write_file(self, volume: str, path: str, content: str | bytes) -> dict[str, Any]:
        """Create or replace a file (text is stored as UTF-8), making its directories.

        Raises QuotaExceeded, writing nothing, when the volumes would then use
        more than the quota: delete files or volumes, or raise ``quota_mb``.
        """
        if not isinstance(content, str | bytes):
            raise TypeError(f"content must be text or bytes, not {type(content).__name__}")
        data = content.encode() if isinstance(content, str) else content
        volume_path, parts = self._existing(volume), split_path(path)
        with open_dir(volume_path, parts[:-1], create=False) as dir_fd:
            found = None if dir_fd is None else lstat_in(dir_fd, parts[-1], path)
        old = 0 if found is None else found.st_size
        after = self._used() - old + len(data)
        if after > self.quota_bytes:
            raise QuotaExceeded(
                f"writing {human(len(data))} to {volume}/{path} would use {human(after)} "
                f"of the {human(self.quota_bytes)} quota; delete files or volumes, "
                "or raise quota_mb"
            )
        with open_dir(volume_path, parts[:-1], create=True) as dir_fd:
            assert dir_fd is not None
            replace_file(dir_fd, parts[-1], data)
        return {"volume": volume, "path": "/".join(parts), "bytes": len(data), "used_bytes": after}

    @recorded
    def read_file(self, volume: str, path: str, binary: bool = False) -> str | bytes:
        """A file's content: text (invalid UTF-8 replaced), or bytes with ``binary:=true``."""
        parts = split_path(path)
        with open_dir(self._existing(volume), parts[:-1], create=False) as dir_fd:
            if dir_fd is None:
                raise FileNotFoundError(f"no file {path!r} in volume {volume!r}")
            if stat.S_ISLNK(lstat_existing(dir_fd, parts[-1], path).st_mode):
                raise PathRefused(f"{path!r} is a symbolic link; read the file it points to")
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as handle:
                data = handle.read()
        return data if binary else data.decode(errors="replace")

    @recorded
    def delete_file(self, volume: str, path: str) -> dict[str, Any]:
        """Delete one file (or link); returns the bytes freed."""
        parts = split_path(path)
        with open_dir(self._existing(volume), parts[:-1], create=False) as dir_fd:
            if dir_fd is None:
                raise FileNotFoundError(f"no file {path!r} in volume {volume!r}")
            size = lstat_existing(dir_fd, parts[-1], path).st_size
            os.unlink(parts[-1], dir_fd=dir_fd)
        return {"volume": volume, "path": "/".join(parts), "freed_bytes": size}

    # -- helpers ------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if not isinstance(name, str) or not VOLUME_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a volume name; use 1 to 64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        return self.root / name

    def _existing(self, name: str) -> Path:
        path = self._path(name)
        try:
            is_dir = stat.S_ISDIR(path.lstat().st_mode)
        except FileNotFoundError:
            is_dir = False
        if not is_dir:
            raise FileNotFoundError(f"no volume {name!r}; create_volume first (see list_volumes)")
        return path

    def _names(self) -> list[str]:
        with os.scandir(self.root) as entries:
            return sorted(
                entry.name
                for entry in entries
                if VOLUME_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
            )

    def _used(self) -> int:
        return sum(tree_size(self.root / name)[0] for name in self._names())
