"""Reading one output pipe of a driver child, and knowing when what the
child left in it has been read.

When a child dies, what it wrote is in its pipes; end-of-file may come much
later, or never, while a process it started holds the pipe open. So the
kernel does not wait for end-of-file: it asks the pipe how many bytes wait in
it (FIONREAD) and waits until those have been read.
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios

from drivebay.sandbox.output import OutputCapture


class PipeReader(asyncio.Protocol):
    """One output pipe of the child: hands each chunk to its capture and counts
    the bytes, so the kernel can wait for what the child left in the pipe when
    it died without waiting for end-of-file, which a descendant holding the
    pipe could put off for ever."""

    def __init__(self, capture: OutputCapture) -> None:
        self.capture = capture
        self.received = 0
        self._fd = -1
        self._target = 0
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._fd = transport.get_extra_info("pipe").fileno()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.capture.data_received(data)
        if self._waiter is not None and self.received >= self._target:
            self._wake()

    def eof_received(self) -> bool | None:
        return self.capture.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fd = -1
        self.capture.connection_lost(exc)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def wait_pending(self) -> asyncio.Future[None] | None:
        """A future that resolves once the bytes in the pipe now are read, or
        None when there are none (or the pipe is closed)."""
        if self._fd < 0:
            return None
        pending = unread_bytes(self._fd)
        if pending == 0:
            return None
        self._target = self.received + pending
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter


def unread_bytes(fd: int) -> int:
    """How many bytes wait in pipe ``fd`` (FIONREAD; the fd is only queried)."""
    answer = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(answer, sys.byteorder)
