"""File descriptors between the kernel and a driver child: the descriptor channel.

asyncio's (and uvloop's) stream transports cannot carry SCM_RIGHTS, so each
driver process has a second, inherited ``socketpair`` (``SOCK_SEQPACKET``,
``DRIVEBAY_FD_CHANNEL_FD`` in the child) that carries descriptors only. A
*transfer* is the descriptors of one request (a ``handoff``'s reply, a
``takeover``): sent in chunks of at most ``MAX_FDS_PER_MESSAGE`` (the
Linux ``SCM_MAX_FD``), each message a 12-byte header (transfer id, total
count) and its descriptors.

Ordering makes waiting unnecessary: the sender puts every chunk of a
transfer on the descriptor channel *before* it writes the message that names
the transfer on the main channel, so when the receiver reads that message
the descriptors are already queued, and ``drain`` (non-blocking) collects
them. Both ends also drain whenever the channel is readable (a reader on
the loop): what a pair queues is bounded (by the sender's socket buffer), and
a sender waiting for room must never wait for a message it has not sent yet. ``FdInbox`` is the
sans-I/O part: chunks in, a transfer's descriptors out, and every descriptor
it ever held is either handed out or closed.
A truncated control message (``MSG_CTRUNC``: the receiver is out of
descriptors, or the sender sent more than a message can hold) fails its
transfer: what arrived is closed and ``take`` raises.
Standard library only: this runs in the driver's interpreter too.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Iterator, Sequence

MAX_FDS_PER_MESSAGE = 253  # SCM_MAX_FD: Linux refuses more in one control message
HEADER = struct.Struct("!QI")  # transfer id, how many descriptors the transfer has in all
_FD = array.array("i").itemsize
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * _FD)


class FdTransferError(Exception):
    """The descriptors of a transfer did not all arrive (truncated, missing, too
    many); every one that did has been closed. The handover fails, nothing is lost."""


def chunks(transfer_id: int, fds: Sequence[int]) -> Iterator[tuple[bytes, list[int]]]:
    """The messages of one transfer: ``(header, descriptors)``, at most
    ``MAX_FDS_PER_MESSAGE`` descriptors each; none for an empty transfer."""
    header = HEADER.pack(transfer_id, len(fds))
    for start in range(0, len(fds), MAX_FDS_PER_MESSAGE):
        yield header, list(fds[start : start + MAX_FDS_PER_MESSAGE])


class FdInbox:
    """Descriptors received, by transfer, until somebody takes or forgets them.

    A ``strict`` inbox (the kernel's) keeps only transfers it was told to
    ``expect``: a driver cannot make the daemon hold descriptors nobody asked for."""

    def __init__(self, strict: bool = False) -> None:
        self._strict = strict
        self._wanted: set[int] = set()
        self._received: dict[int, list[int]] = {}
        self._expected: dict[int, int] = {}
        self._broken: dict[int, str] = {}
        self._forgotten: set[int] = set()

    def add(self, transfer_id: int, total: int, fds: list[int], truncated: str = "") -> None:
        """One chunk arrived. ``truncated``: why its control message was cut
        short (the whole transfer is then failed and closed)."""
        if transfer_id in self._forgotten or (self._strict and transfer_id not in self._wanted):
            _close_all(fds)
            return
        held = self._received.setdefault(transfer_id, [])
        held.extend(fds)
        self._expected[transfer_id] = total
        if truncated and transfer_id not in self._broken:
            self._broken[transfer_id] = truncated
        if transfer_id in self._broken:
            _close_all(held)
            held.clear()
        elif len(held) > total:
            self._broken[transfer_id] = f"{len(held)} descriptors arrived for {total}"
            _close_all(held)
            held.clear()

    def expect(self, transfer_id: int) -> None:
        """A strict inbox keeps what arrives for ``transfer_id`` (until taken or forgotten)."""
        self._wanted.add(transfer_id)

    def take(self, transfer_id: int, count: int) -> list[int]:
        """The ``count`` descriptors of ``transfer_id``, now the caller's to close.

        Raises FdTransferError (having closed what arrived) when they are not
        all there, or the transfer was truncated."""
        self._wanted.discard(transfer_id)
        held = self._received.pop(transfer_id, [])
        expected = self._expected.pop(transfer_id, 0)
        broken = self._broken.pop(transfer_id, "")
        if not broken and count and expected != count:
            broken = f"{count} descriptors were announced, {expected} sent"
        elif not broken and len(held) != count:
            broken = f"{len(held)} of {count} descriptors arrived"
        if broken:
            _close_all(held)
            raise FdTransferError(broken)
        return held

    def forget(self, transfer_id: int) -> None:
        """Nobody will take ``transfer_id``: close what arrived and what will."""
        self._wanted.discard(transfer_id)
        _close_all(self._received.pop(transfer_id, []))
        self._expected.pop(transfer_id, None)
        self._broken.pop(transfer_id, None)
        if not self._strict:  # a strict inbox refuses it anyway, and remembers nothing
            self._forgotten.add(transfer_id)

    def close(self) -> None:
        """Close every descriptor held (the channel is going away)."""
        for held in self._received.values():
            _close_all(held)
        self._received.clear()
        self._expected.clear()
        self._broken.clear()

    @property
    def held(self) -> int:
        return sum(len(fds) for fds in self._received.values())


def drain(sock: socket.socket, inbox: FdInbox) -> bool:
    """Read every message queued on the non-blocking ``sock`` into ``inbox``;
    False once the peer is gone (a reader must then stop watching ``sock``)."""
    flags = socket.MSG_CMSG_CLOEXEC
    while True:
        try:
            data, ancillary, msg_flags, _ = sock.recvmsg(HEADER.size, _ANCILLARY, flags)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # the peer is gone: nothing more will come
            return False
        fds = _descriptors(ancillary)
        if not data and not fds:
            return False  # end of file
        if len(data) != HEADER.size:
            _close_all(fds)  # not one of ours: nobody can claim these
            continue
        transfer_id, total = HEADER.unpack(data)
        truncated = ""
        if msg_flags & socket.MSG_CTRUNC:
            truncated = (
                "a control message was truncated (MSG_CTRUNC): the receiving process is out "
                "of descriptors (its open_files limit)"
            )
        inbox.add(transfer_id, total, fds, truncated)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD
            fds.extend(array.array("i", data[:usable]))
    return fds


async def send(sock: socket.socket, transfer_id: int, fds: Sequence[int]) -> None:
    """Send one transfer on the non-blocking ``sock``, waiting (through the
    loop, never blocking it) while the peer's queue is full. Callers bound
    the wait. Raises OSError when the channel is gone."""
    loop = asyncio.get_running_loop()
    for header, part in chunks(transfer_id, fds):
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", part).tobytes())]
        while True:
            try:
                sock.sendmsg([header], ancillary)
                break
            except (BlockingIOError, InterruptedError):
                await _writable(loop, sock)


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_writer(sock.fileno())


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
