"""Running a driver as an unprivileged user, and checking it can before trying.

A root daemon may run drivers as another user (config ``user:``). The switch
is done by the spawn itself (setgid, setgroups, setuid between fork and
exec), so no code of the driver ever runs as root. Before that, ``preflight``
walks every path the child needs (interpreter, environment, runtime, bundle,
working directory) with that user's ids and says in one line what it could
not reach and how to fix it: the common case is an interpreter under root's
home, which ``nobody`` cannot enter.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from drivebay.protocol.errors import DriverStartError

READ, EXECUTE = 4, 1


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        """Raises DriverStartError for an unknown user, or when we are not root."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise DriverStartError(
                f"user {name!r} does not exist; fix `user:` in the config"
            ) from None
        if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
            raise DriverStartError(
                f"cannot run drivers as {name}: drivebayd is not root; remove `user:` or run "
                "drivebayd as root"
            )
        groups = tuple(os.getgrouplist(name, entry.pw_gid))
        return cls(name, entry.pw_uid, entry.pw_gid, groups)


def _allowed(info: os.stat_result, who: RunAs, want: int) -> bool:
    if who.uid == 0:
        return True
    if info.st_uid == who.uid:
        bits = (info.st_mode >> 6) & 7
    elif info.st_gid in who.groups:
        bits = (info.st_mode >> 3) & 7
    else:
        bits = info.st_mode & 7
    return bits & want == want


def blocked_at(path: Path, who: RunAs, want: int) -> str | None:
    """Why ``who`` cannot reach ``path`` with ``want`` (READ/EXECUTE), or None."""
    absolute = Path(os.path.abspath(path))
    for parent in reversed(absolute.parents):
        info = os.stat(parent)
        if not _allowed(info, who, EXECUTE):
            return f"{parent} is not searchable by {who.name}"
    try:
        info = os.stat(absolute)
    except FileNotFoundError:
        return f"{absolute} does not exist"
    need = want | (EXECUTE if stat.S_ISDIR(info.st_mode) else 0)
    if not _allowed(info, who, need):
        verb = "run" if want & EXECUTE else "read"
        return f"{who.name} cannot {verb} {absolute}"
    return None


def preflight(who: RunAs, python: Path, readable: list[Path]) -> None:
    """Raise DriverStartError (one line, with the fix) if ``who`` cannot run the child."""
    real = Path(os.path.realpath(python))
    for path, want in [(python, EXECUTE), (real, EXECUTE), *((p, READ) for p in readable)]:
        problem = blocked_at(path, who, want)
        if problem is not None:
            raise DriverStartError(
                f"cannot run the driver as {who.name}: {problem}; choose another `user:`, "
                f"or set `python:` to an interpreter {who.name} can run (such as /usr/bin/python3)"
            )


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
