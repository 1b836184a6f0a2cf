"""Point-in-time copies of the volumes of a dir-volumes root.

This driver ``requires: [dir-volumes]``: it works on the layout that driver
keeps (a volume is a directory ``<volumes_root>/<name>``) and attaches only
once that root exists. A snapshot is a full copy of a volume, kept as
``<snapshot_root>/<volume>/snap-0001``, ``snap-0002``, ...; the oldest are
deleted past ``keep`` per volume. ``snapshot_root`` may sit inside
``volumes_root`` under a name that is not a volume name, such as
``.snapshots``: dir-volumes leaves it alone and does not count it.

Copies never follow links (a link is copied as a link) and skip fifos,
sockets and devices, which a copy would block on or could not recreate. Both
a snapshot and a restore are built under a temporary name and renamed into
place, so a half-made copy is never seen as a snapshot or a volume.

The operations are sync: the driver runtime runs them in a worker thread.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SNAPSHOT_NAME = re.compile(r"snap-(\d{4,9})")
DEFAULT_KEEP = 5


def _absolute(properties: dict[str, Any], key: str) -> Path:
    value = properties.get(key)
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ValueError(f"{key} must be an absolute directory path, got {value!r}")
    return Path(os.path.normpath(value))


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _skip_special(directory: str, names: list[str]) -> set[str]:
    """``copytree``'s ignore: fifos, sockets and devices are not copied."""
    keep = (stat.S_ISDIR, stat.S_ISREG, stat.S_ISLNK)
    modes = {name: os.lstat(os.path.join(directory, name)).st_mode for name in names}
    return {name for name, mode in modes.items() if not any(kind(mode) for kind in keep)}


def _copy(source: Path, staging_parent: Path) -> Path:
    """A copy of ``source`` under a temporary name in ``staging_parent``."""
    staging = staging_parent / f".staging-{secrets.token_hex(8)}"
    try:
        shutil.copytree(source, staging, symlinks=True, ignore=_skip_special)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


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


def _describe(volume: str, path: Path) -> dict[str, Any]:
    size, files = tree_size(path)
    created = datetime.fromtimestamp(path.lstat().st_mtime, UTC)
    return {
        "volume": volume,
        "snapshot": path.name,
        "created_at": created.isoformat(timespec="seconds"),
        "bytes": size,
        "files": files,
    }


class SnapshotVolumes:
    """Snapshots of the volumes under ``volumes_root``, kept in ``snapshot_root``."""

    def __init__(self, resource_id: str, properties: dict[str, Any]) -> None:
        self.resource_id = resource_id
        self.volumes_root = _absolute(properties, "volumes_root")
        self.snapshot_root = _absolute(properties, "snapshot_root")
        keep = properties.get("keep", DEFAULT_KEEP)
        whole = isinstance(keep, int | float) and not isinstance(keep, bool)
        if not whole or keep < 1 or not float(keep).is_integer():
            raise ValueError(f"keep must be a whole number of snapshots from 1, got {keep!r}")
        self.keep = int(keep)
        if self.snapshot_root.is_relative_to(self.volumes_root):
            inside = self.snapshot_root.relative_to(self.volumes_root).parts
            if not inside or VOLUME_NAME.fullmatch(inside[0]):
                raise ValueError(
                    f"snapshot_root {self.snapshot_root} would be a volume or inside one; "
                    f"use a directory such as {self.volumes_root / '.snapshots'}"
                )

    def attach(self) -> None:
        """Check the volumes root exists and create ``snapshot_root`` if needed."""
        if not self.volumes_root.is_dir():
            raise FileNotFoundError(
                f"volumes_root {self.volumes_root} does not exist; attach a dir-volumes "
                "resource with that root first"
            )
        self.snapshot_root.mkdir(parents=True, exist_ok=True)

    # -- operations -------------------------------------------------------------

    def snapshot(self, volume: str) -> dict[str, Any]:
        """Copy a volume as its next snapshot; the oldest past ``keep`` are deleted."""
        source = self._volume(volume)
        directory = self.snapshot_root / volume
        directory.mkdir(exist_ok=True)
        numbers = [number for number, _ in self._snapshots(volume)]
        staging = _copy(source, directory)
        os.utime(staging)  # copytree copied the volume's times; this one is the snapshot's
        target = directory / f"snap-{max(numbers, default=0) + 1:04d}"
        os.rename(staging, target)
        pruned = [path.name for _, path in self._snapshots(volume)[: -self.keep]]
        for name in pruned:
            shutil.rmtree(directory / name)
        return {**_describe(volume, target), "pruned": pruned}

    def list_snapshots(self, volume: str | None = None) -> list[dict[str, Any]]:
        """The snapshots of one volume, or of every volume, oldest first."""
        if volume is not None:
            volumes = [_volume_name(volume)]
        else:
            volumes = sorted(
                entry.name
                for entry in os.scandir(self.snapshot_root)
                if VOLUME_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
            )
        return [_describe(name, path) for name in volumes for _, path in self._snapshots(name)]

    def restore(self, volume: str, snapshot: str) -> dict[str, Any]:
        """Replace the volume's content with the snapshot's (recreating a deleted volume)."""
        source = self._snapshot(volume, snapshot)
        target = self.volumes_root / volume
        staging = _copy(source, self.volumes_root)
        if _real_dir(target):
            # Two renames, not one exchange: the volume is missing for an instant.
            old = self.volumes_root / f".old-{secrets.token_hex(8)}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.rename(staging, target)
        size, files = tree_size(target)
        return {"volume": volume, "snapshot": snapshot, "bytes": size, "files": files}

    def delete_snapshot(self, volume: str, snapshot: str) -> dict[str, Any]:
        """Delete one snapshot; returns what it held."""
        path = self._snapshot(volume, snapshot)
        described = _describe(volume, path)
        shutil.rmtree(path)
        return {"volume": volume, "snapshot": snapshot, "freed_bytes": described["bytes"]}

    # -- helpers ----------------------------------------------------------------

    def _volume(self, volume: str) -> Path:
        path = self.volumes_root / _volume_name(volume)
        if not _real_dir(path):
            raise FileNotFoundError(f"no volume {volume!r} in {self.volumes_root}")
        return path

    def _snapshot(self, volume: str, snapshot: str) -> Path:
        if not isinstance(snapshot, str) or not SNAPSHOT_NAME.fullmatch(snapshot):
            raise ValueError(f"{snapshot!r} is not a snapshot name; use one list_snapshots shows")
        path = self.snapshot_root / _volume_name(volume) / snapshot
        if not _real_dir(path):
            raise FileNotFoundError(
                f"no snapshot {snapshot!r} of volume {volume!r}; see list_snapshots"
            )
        return path

    def _snapshots(self, volume: str) -> list[tuple[int, Path]]:
        """``(number, path)`` of each snapshot of ``volume``, oldest first."""
        directory = self.snapshot_root / volume
        if not _real_dir(directory):
            return []
        found = []
        with os.scandir(directory) as entries:
            for entry in entries:
                match = SNAPSHOT_NAME.fullmatch(entry.name)
                if match and entry.is_dir(follow_symlinks=False):
                    found.append((int(match[1]), Path(entry.path)))
        return sorted(found)


def _volume_name(name: str) -> str:
    if not isinstance(name, str) or not VOLUME_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a volume name; use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
