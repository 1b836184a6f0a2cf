"""Control-socket abuse for ``chaos.py``: garbage, huge frames, idle crowds, slow senders.

While the load runs over connections made before, other clients send
garbage, length prefixes over the limit, frames of 16 MiB that never end,
requests one byte at a time, and a crowd of connections that say nothing.
All of them are held open at once; the daemon's RSS and descriptors are
read then (the attack's *after*), and the driver is killed once while they
are held (its next spare needs descriptors) and once after they are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import struct
import time
from dataclasses import dataclass

from _chaos_scene import Scene

from drivebay.client import AsyncClient
from drivebay.protocol.codec import MessageCodec
from drivebay.protocol.control import Reply, Request
from drivebay.protocol.frames import DEFAULT_MAX_FRAME

CONNECT_S = 2.0
SEND_S = 3.0


@dataclass(frozen=True)
class AbusePlan:
    garbage: int  # connections sending bytes that are no frame, or no message
    huge_prefix: int  # connections announcing a frame over the limit
    big_frames: int  # connections sending a 16 MiB frame but its last byte
    slow: int  # connections sending a status request a byte at a time
    slow_byte_s: float
    idle: int  # connections that say nothing
    warm_s: float
    tail_s: float


class Crowd:
    """The abusive connections, all closed at the end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sockets: list[socket.socket] = []
        self.failed: dict[str, int] = {}

    async def open(self) -> socket.socket | None:
        """A new connection; retried while the listen backlog is full (EAGAIN),
        up to CONNECT_S. None (counted by errno) when it cannot be made."""
        try:
            async with asyncio.timeout(CONNECT_S):
                while True:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    try:
                        sock.connect(self.path)  # non-blocking: connected at once, or EAGAIN
                    except BlockingIOError:
                        sock.close()
                        await asyncio.sleep(0.005)
                        continue
                    except OSError:
                        sock.close()
                        raise
                    self.sockets.append(sock)
                    return sock
        except (OSError, TimeoutError) as exc:
            kind = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            self.failed[kind] = self.failed.get(kind, 0) + 1
            return None

    async def idle(self, count: int, give_up_after: int = 3) -> int:
        """Open ``count`` connections that say nothing (stop after ``give_up_after`` failures)."""
        opened, failed_before = 0, sum(self.failed.values())
        for _ in range(count):
            if sum(self.failed.values()) - failed_before >= give_up_after:
                break
            opened += await self.open() is not None
        return opened

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


async def _send(sock: socket.socket, data: bytes | memoryview) -> bool:
    """Whether all of ``data`` went out within SEND_S (a daemon that stops reading
    leaves the rest unsent)."""
    try:
        async with asyncio.timeout(SEND_S):
            await asyncio.get_running_loop().sock_sendall(sock, data)
    except (OSError, TimeoutError):
        return False
    return True


async def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the daemon closes the connection within ``within`` s (its replies are
    read and dropped)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            while await loop.sock_recv(sock, 65536):
                pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


async def _garbage(crowd: Crowd, count: int) -> int:
    """Connections sending garbage; how many the daemon closed."""

    async def one(n: int) -> bool:
        sock = await crowd.open()
        if sock is None:
            return False
        junk = os.urandom(4096) if n % 2 else struct.pack(">I", 64) + b"\xc1" * 64
        await _send(sock, junk)
        return await _closed_by_peer(sock, 2.0)

    return sum(await asyncio.gather(*(one(n) for n in range(count))))


async def _huge_prefix(crowd: Crowd, count: int) -> int:
    async def one() -> bool:
        sock = await crowd.open()
        if sock is None:
            return False
        await _send(sock, b"\xff\xff\xff\xff")
        return await _closed_by_peer(sock, 2.0)

    return sum(await asyncio.gather(*(one() for _ in range(count))))


async def _big_frames(crowd: Crowd, count: int) -> int:
    """Frames of the largest size allowed, all but their last byte; how many went out whole."""
    frame = memoryview(struct.pack(">I", DEFAULT_MAX_FRAME) + bytes(DEFAULT_MAX_FRAME - 1))

    async def one() -> bool:
        sock = await crowd.open()
        return sock is not None and await _send(sock, frame)

    return sum(await asyncio.gather(*(one() for _ in range(count))))


async def _slow(crowd: Crowd, count: int, byte_s: float) -> int:
    """Status requests a byte at a time; how many were answered."""
    codec: MessageCodec[Reply] = MessageCodec(Reply, "drivebayd")
    request = bytes(codec.encode(Request(1, "status", {})))
    loop = asyncio.get_running_loop()

    async def one() -> bool:
        sock = await crowd.open()
        if sock is None:
            return False
        for n in range(len(request)):
            if not await _send(sock, request[n : n + 1]):
                return False
            await asyncio.sleep(byte_s)
        try:
            async with asyncio.timeout(5.0):
                return bool(await loop.sock_recv(sock, 65536))
        except (OSError, TimeoutError):
            return False

    return sum(await asyncio.gather(*(one() for _ in range(count))))


async def _kill_driver(scene: Scene) -> None:
    row = await scene.running_row()
    killed = time.perf_counter()
    with contextlib.suppress(ProcessLookupError):
        os.kill(row["pid"], signal.SIGKILL)
    await scene.wait_running({row["pid"]}, killed)


async def _fresh_client(path: str) -> str:
    """What a new client's ``version`` request gets."""
    try:
        async with asyncio.timeout(5.0):
            client = await AsyncClient.connect(path)
            try:
                await client.request("version")
            finally:
                await client.close()
    except Exception as exc:  # refused, reset, timed out: not answered
        return f"NOT answered ({type(exc).__name__}: {str(exc)[:80]})"
    return "answered"


async def control_abuse(scene: Scene, plan: AbusePlan) -> None:
    daemon = scene.daemon
    await asyncio.sleep(plan.warm_s)
    crowd = Crowd(str(daemon.socket))
    try:
        closed = await _garbage(crowd, plan.garbage)
        scene.note(f"garbage: {closed}/{plan.garbage} connections closed by the daemon")
        closed = await _huge_prefix(crowd, plan.huge_prefix)
        scene.note(f"length prefix 0xffffffff: {closed}/{plan.huge_prefix} closed by the daemon")
        slow = asyncio.ensure_future(_slow(crowd, plan.slow, plan.slow_byte_s))
        whole = await _big_frames(crowd, plan.big_frames)
        scene.note(f"16 MiB frames short of one byte: {whole}/{plan.big_frames} taken whole")
        idle = await crowd.idle(plan.idle)
        scene.note(f"idle connections: {idle}/{plan.idle} opened; failed: {crowd.failed or 0}")
        answered = await slow
        scene.note(f"slow senders ({plan.slow_byte_s:g} s a byte): {answered}/{plan.slow} answered")
        scene.after = (daemon.rss_kb(), daemon.fds())
        scene.note(f"a new client while all are held: {await _fresh_client(str(daemon.socket))}")
        await _kill_driver(scene)
        scene.note(f"driver killed while held: RUNNING after {scene.recoveries_ms[-1]:,.0f} ms")
    finally:
        crowd.close()
    await asyncio.sleep(plan.warm_s)
    await _kill_driver(scene)
    scene.note(f"driver killed after: RUNNING after {scene.recoveries_ms[-1]:,.0f} ms")
    scene.note(f"a new client after: {await _fresh_client(str(daemon.socket))}")
    await asyncio.sleep(plan.tail_s)
