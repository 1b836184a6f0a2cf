"""Capture of a driver child's stdout and stderr.

The child's two streams are pipes the kernel reads: each chunk goes to the
driver's log file (rotated by size, no line-length cap) and the last lines
stay in memory, so an error about a crash can quote what the driver said.
A driver printing garbage costs it log space, never the kernel's channel.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Callable
from pathlib import Path


class RotatingFile:
    """Appends bytes to ``path``; past ``max_bytes`` shifts it to ``path.1`` …"""

    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 3) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        if self._max_bytes and self._size + len(data) > self._max_bytes and self._size:
            self._rotate()
        os.write(self._fd, data)
        self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        for index in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self._backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.truncate(self.path, 0)
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_TRUNC, 0o640
        )
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OutputCapture(asyncio.Protocol):
    """Reads one pipe of the child: into the log file and a tail of lines."""

    def __init__(
        self,
        log_file: RotatingFile | None,
        keep_lines: int = 100,
        listener: Callable[[bytes], None] | None = None,
    ) -> None:
        self._file = log_file
        self._listener = listener
        self._lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._partial = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)
        if self._listener is not None:
            self._listener(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            self._lines.append(line.decode("utf-8", "replace"))
        if len(self._partial) > 64 * 1024:  # a huge unterminated line: keep its start
            self._lines.append(self._partial[:4096].decode("utf-8", "replace") + "…")
            self._partial = b""

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial:
            self._lines.append(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        if self._file is not None:
            self._file.close()
        if not self.closed.done():
            self.closed.set_result(None)

    def tail(self, lines: int = 20) -> list[str]:
        return list(self._lines)[-lines:]
