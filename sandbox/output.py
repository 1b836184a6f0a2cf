"""Capture of a driver child's stdout and stderr.

The child's two streams are pipes the kernel reads: each chunk goes to the
driver's log file (rotated by size, no line-length cap) and the last lines
stay in memory, so an error about a crash can quote what the driver said.
A driver printing garbage costs it log space, never the kernel's channel.

A log file that cannot be written (a full disk, its directory gone, an I/O
error) never stops the pipe being read: the bytes are dropped and counted,
the log says once why, and the file is opened again at the next chunk after
``RETRY_S``; once writing works again, the log says how many bytes were lost.
A log file is opened at the driver's first output, not before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

log = logging.getLogger("drivebay.output")

RETRY_S: Final = 1.0  # after a failed write, chunks are dropped this long before a retry


class RotatingFile:
    """Appends bytes to ``path``; past ``max_bytes`` shifts it to ``path.1`` …

    ``write`` never raises: what cannot be written is dropped (see the
    module's docstring); ``dropped`` counts the bytes of the current outage."""

    def __init__(
        self,
        path: Path,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 3,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._clock = clock
        self._fd = -1
        self._size = 0
        self.dropped = 0
        self._why = ""  # why the bytes are dropped
        self._retry_at = 0.0
        self._closed = False
        # Opened at the first write: a quiet driver (and every warm spare) holds
        # no log descriptors, so a driver version costs 8 of them, not 12.

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        if self._fd < 0 and not self._reopen():
            self.dropped += len(data)
            return
        written = 0
        try:
            if self._max_bytes and self._size + len(data) > self._max_bytes and self._size:
                self._rotate()
            while written < len(data):  # more than once: the disk filled up mid-chunk
                count = os.write(self._fd, data[written:] if written else data)
                self._size += count
                written += count
        except OSError as exc:
            self._failed(exc, len(data) - written)
            return
        if self._why:
            log.warning(
                "%s: writing again; %d bytes of driver output were dropped (%s)",
                self.path,
                self.dropped,
                self._why,
            )
            self.dropped, self._why = 0, ""

    def _reopen(self) -> bool:
        """After a failure: try the file again once ``RETRY_S`` has passed."""
        return self._clock() >= self._retry_at and self._open()

    def _open(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            self._failed(exc, 0)
            return False
        return True

    def _failed(self, exc: OSError, lost: int) -> None:
        """Drop ``lost`` bytes; say so when an outage begins; retry later."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):  # nothing of ours is buffered
                os.close(self._fd)
            self._fd = -1
        if self._why == "":
            self._why = exc.strerror or str(exc)
            log.warning(
                "%s: cannot write this driver's output (%s); dropping it until the "
                "file can be written again",
                self.path,
                self._why,
            )
        self.dropped += lost
        self._retry_at = self._clock() + RETRY_S

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
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
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.dropped:
            log.warning(
                "%s: %d bytes of driver output were dropped (%s); the stream ended before "
                "the file could be written again",
                self.path,
                self.dropped,
                self._why,
            )
            self.dropped = 0


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
