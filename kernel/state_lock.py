"""One daemon per state directory: an exclusive lock held for the daemon's life.

The lock is an ``flock`` on ``<state>/drivebayd.lock``, so it disappears with
the process however it dies: a stale lock file never blocks a restart. The
file holds the owner's pid, for the error a second daemon prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from drivebay.protocol.errors import KernelError


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "drivebayd.lock"
        self._fd = -1

    def acquire(self) -> None:
        """Raises KernelError when another daemon holds the lock, or the state
        dir cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise KernelError(
                f"cannot use state dir {self.path.parent}: {exc.strerror}; "
                "make it writable for this user, or choose another --state"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise KernelError(
                f"another drivebayd (pid {owner}) is already running on {self.path.parent}; "
                "stop it first or use another --state"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
