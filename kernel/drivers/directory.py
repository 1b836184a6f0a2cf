"""Reading the drivers dir: its entries, and a bounded walk of each one.

Everything here blocks on the file system, so the registry runs it in a
worker thread, never on the event loop. Nothing follows a symbolic link: a
link at the top of the drivers dir is reported as a link (the registry
refuses it), and a walk looks at links inside a bundle without entering
them (the reader refuses those). A walk stops at the first bundle limit it
meets (entries, folder depth, bytes): a tree of a million files costs what
``max_members`` entries cost, and the limit it hit is the bundle's verdict.
``settled`` is the pure rule for a directory still being copied.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from drivebay.protocol.errors import BundleError
from drivebay.sandbox.bundle_errors import shown
from drivebay.sandbox.bundle_limits import Budget, ReadLimits

# (path inside the entry, file type, size, mtime ns, ctime ns): what a walk
# saw. The ctime catches what the mtime does not: a chmod, a file replaced by
# one with the same size and mtime.
Fingerprint = tuple[tuple[str, int, int, int, int], ...]
# (inode, size, mtime ns, ctime ns) of the top-level entry itself (lstat).
TopStat = tuple[int, int, int, int]

_TEMPORARY = ("~", ".tmp", ".part", ".swp")


@dataclass(frozen=True, slots=True)
class Top:
    """One candidate bundle at the top of the drivers dir, as ``lstat`` sees it."""

    path: Path
    stat: TopStat
    is_dir: bool
    link: str | None = None  # the target, when the entry is a symbolic link


@dataclass(frozen=True, slots=True)
class Walk:
    """What a bounded walk of one entry saw.

    ``refused`` is the one-line verdict when the walk stopped at a limit or
    the entry is a link (the entry is INVALID without being read);
    ``dirs`` are the root and the directories it met (the ones to watch);
    ``visited`` counts the entries it looked at.
    """

    fingerprint: Fingerprint
    newest_ns: int = 0
    dirs: tuple[Path, ...] = ()
    visited: int = 0
    refused: str | None = None


def list_candidates(drivers_dir: Path) -> dict[Path, Top]:
    """The bundles in ``drivers_dir`` (directories and ``.zip`` files, and
    links that look like one), hidden and temporary names left out. A
    missing drivers dir holds none; other ``OSError``s propagate."""
    found: dict[Path, Top] = {}
    try:
        entries = os.scandir(drivers_dir)
    except FileNotFoundError:
        return found
    with entries:
        for entry in entries:
            top = _candidate(entry)
            if top is not None:
                found[Path(entry.path)] = top
    return dict(sorted(found.items()))


def _candidate(entry: os.DirEntry[str]) -> Top | None:
    name = entry.name
    if name.startswith(".") or name.endswith(_TEMPORARY):
        return None
    try:
        info = entry.stat(follow_symlinks=False)
        is_dir = stat.S_ISDIR(info.st_mode)
        link = os.readlink(entry.path) if stat.S_ISLNK(info.st_mode) else None
        if link is not None:
            is_dir = os.path.isdir(entry.path)  # one stat of the target, never a walk
    except FileNotFoundError:  # gone since the listing
        return None
    if not is_dir and not name.endswith(".zip"):
        return None
    top_stat = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return Top(Path(entry.path), top_stat, is_dir, link)


def look(
    drivers_dir: Path, limits: ReadLimits, known: dict[Path, Top], again: set[Path], wide: bool
) -> tuple[dict[Path, Top], dict[Path, Walk]]:
    """The entries of ``drivers_dir`` now, and a walk of each one that is new,
    changed at the top (``known`` is the last look), or asked for (``again``;
    every one if ``wide``)."""
    tops = list_candidates(drivers_dir)
    walks = {
        path: walk(top, limits)
        for path, top in tops.items()
        if wide or path in again or known.get(path) != top
    }
    return tops, walks


def settled(seen: Walk, unchanged_for: float, now: float, settle_s: float) -> bool:
    """Has a directory stopped changing? Yes when nothing in it was modified
    within ``settle_s`` (by the wall clock ``now``), or when the walk has seen
    the same fingerprint for ``settle_s`` (a future mtime, from a fast clock
    elsewhere, waits no longer than that)."""
    return now - seen.newest_ns / 1e9 >= settle_s or unchanged_for >= settle_s


def walk(top: Top, limits: ReadLimits) -> Walk:
    """The fingerprint of ``top``, stopping at the first limit of ``limits``."""
    name = top.path.name
    if top.link is not None:
        return Walk(
            fingerprint=(("->" + top.link, stat.S_IFLNK, *top.stat[1:]),),
            refused=(
                f"{shown(name)}: is a symbolic link (to {shown(top.link)}); put the bundle "
                "itself in the drivers dir, not a link to it"
            ),
        )
    if not top.is_dir:
        return Walk((("", stat.S_IFREG, *top.stat[1:]),), top.stat[2], visited=1)
    items: list[tuple[str, int, int, int, int]] = []
    dirs = [top.path]
    refused = None
    try:
        for rel, info in _entries(top.path, Budget(name, limits)):
            kind, size = stat.S_IFMT(info.st_mode), info.st_size
            items.append((rel, kind, size, info.st_mtime_ns, info.st_ctime_ns))
            if stat.S_ISDIR(info.st_mode):
                dirs.append(top.path / rel)
    except BundleError as exc:
        refused = str(exc)
    except OSError as exc:  # changed under the walk, or unreadable: the reader says which
        items.append((f"!{exc.errno}", 0, 0, 0, 0))
    newest = max((mtime for _, _, _, mtime, _ in items), default=0)
    return Walk(tuple(items), max(newest, top.stat[2]), tuple(dirs), len(items), refused)


def _entries(root: Path, budget: Budget) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``root`` (depth first, links not entered), each
    counted against ``budget`` before the next is looked at; raises
    ``BundleError`` at the first one over a limit."""
    pending = [""]
    while pending:
        prefix = pending.pop()
        # O_NOFOLLOW: a folder swapped for a link since its lstat is not entered.
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(root / prefix, flags)
        try:
            yield from _listed(fd, prefix, budget, pending)
        finally:
            os.close(fd)


def _listed(
    fd: int, prefix: str, budget: Budget, pending: list[str]
) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(fd) as entries:
        for entry in entries:
            budget.add_member()
            rel = budget.check_path(prefix + entry.name)
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                pending.append(rel + "/")
            elif stat.S_ISREG(info.st_mode):
                budget.add_bytes(rel, info.st_size)
            yield rel, info
