"""``metrics.listen``: a TCP address of its own for Prometheus, on the daemon's loop.

A minimal HTTP/1.1 responder on ``asyncio.start_server``: one request per
connection (``Connection: close``), ``GET /metrics`` (and ``HEAD``), 404 for
other paths, 405 for other methods. It runs on the event loop and renders
through ``render_metrics``, which reads the kernel there and does its I/O in
a worker thread; ``prometheus_client``'s own server would run in a thread of
its own that nobody stops or awaits, and would read the kernel's objects from
that thread while the loop changes them.

The HTTP API serves the same ``GET /metrics``; this listener is for a
Prometheus that scrapes over TCP without the API's credentials. Each
connection is a task this module owns: bounded in number, in how long the
request head may take to arrive, and cancelled and awaited at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from drivebay.kernel.metrics.exposition import render_metrics
from drivebay.protocol.errors import KernelError

if TYPE_CHECKING:
    from drivebay.kernel.kernel import Kernel

log = logging.getLogger("drivebay.metrics")

MAX_CONNECTIONS = 16  # scrapers are few; more at once are closed unanswered
HEAD_LIMIT = 8192  # bytes of request line and headers
REQUEST_S = 10.0  # for the head to arrive, and for the answer to be taken
STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(status: int, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {STATUS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + body


class MetricsListener:
    """Serves ``/metrics`` of ``kernel`` on one TCP address."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._tasks.add(task)
        try:
            async with asyncio.timeout(REQUEST_S):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(await self._answer(head))
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            pass  # no whole request in time, or the client went away: no answer
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, head: bytes) -> bytes:
        request_line, *headers = head.split(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response(400, b"bad request\n", "text/plain")
        method, target = parts[0], parts[1]
        if target.split(b"?", 1)[0] != b"/metrics":
            return _response(404, b"not found: the metrics are at /metrics\n", "text/plain")
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"method not allowed: use GET\n", "text/plain")
        accept = next(
            (
                value
                for name, _, value in (h.partition(b":") for h in headers)
                if name.strip().lower() == b"accept"
            ),
            b"",
        )
        body, content_type = await render_metrics(self._kernel, accept.decode("latin-1"))
        return _response(200, body, content_type, head_only=method == b"HEAD")

    async def close(self) -> None:
        """End the connections still open (bounded: each ends at its next await)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


@contextlib.asynccontextmanager
async def serve_metrics(kernel: Kernel) -> AsyncIterator[list[tuple[str, int]]]:
    """Listen on ``metrics.listen`` for as long as the context lasts; yields
    the (host, port) pairs bound (none when it is not set). Raises
    KernelError when the address cannot be bound."""
    address = kernel.config.metrics.address()
    if address is None:
        yield []
        return
    host, port = address
    listener = MetricsListener(kernel)
    try:
        server = await asyncio.start_server(listener.handle, host, port, limit=HEAD_LIMIT)
    except OSError as exc:
        hint = "choose another port" if exc.errno == errno.EADDRINUSE else "check the address"
        # asyncio's strerror repeats the address; the errno's own words do not.
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise KernelError(
            f"metrics.listen {kernel.config.metrics.listen}: cannot listen: {why}; {hint}"
        ) from exc
    bound = [sock.getsockname()[:2] for sock in server.sockets]
    for name, number in bound:
        log.info("metrics: http://%s:%d/metrics", f"[{name}]" if ":" in name else name, number)
    try:
        yield bound
    finally:
        server.close()
        await listener.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()
