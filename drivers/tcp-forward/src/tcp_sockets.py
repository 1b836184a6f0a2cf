"""Making TCP sockets without the resolver's threads: ``resolve``, ``bind``, ``connect``.

An address (the usual ``127.0.0.1``) is used as it is. Both event loops
would otherwise ask ``getaddrinfo`` in worker threads, and uvloop's
``sock_connect`` does so even for an address: each such thread takes a
malloc arena and a stack of address space, which together exceed the
driver's ``memory_mb`` limit long before memory runs short. A host name is
still looked up (in the loop's executor).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from typing import Any


async def resolve(host: str, port: int, passive: bool = False) -> list[Any]:
    """``getaddrinfo``'s answers for a TCP ``host:port``. An address needs no
    lookup: asking anyway would start the resolver's threads, each with an
    arena of its own that counts against the driver's memory limit."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        flags = socket.AI_PASSIVE if passive else 0
        loop = asyncio.get_running_loop()
        return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


async def bind(host: str, port: int) -> socket.socket:
    """A non-blocking socket listening on ``host:port`` (port 0: any free one).

    Raises OSError with a line saying what to change when the address cannot
    be bound (in use, or a port below 1024 without privileges).
    """
    try:
        family, kind, proto, _, address = (await resolve(host, port, passive=True))[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(
            exc.errno,
            f"cannot listen on {host}:{port} ({reason}); "
            "choose another listen_port or stop what uses it",
        ) from exc
    return sock


async def connect(sock: socket.socket, address: Any) -> None:
    """Connect the non-blocking ``sock`` to ``address``; OSError when refused or unreachable."""
    code = sock.connect_ex(address)
    if code in (errno.EINPROGRESS, errno.EAGAIN):
        loop = asyncio.get_running_loop()
        writable = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _settle, writable)
        try:
            await writable
        finally:
            loop.remove_writer(fd)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, f"{os.strerror(code)} ({address[0]}:{address[1]})")


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
