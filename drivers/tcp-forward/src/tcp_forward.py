"""A TCP port forwarder: one listening socket per resource, relayed to a target.

Each accepted connection opens its own connection to ``target_host:target_port``
and copies bytes both ways until both sides have finished. A half-close
(EOF from one side) is passed on, so request/response protocols that shut down
their write side still work. ``bytes_in`` counts client -> target bytes,
``bytes_out`` target -> client bytes.

Standard library only; every connection is a task the forwarder owns and
cancels on ``detach``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("tcp_forward")

CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0


def _port(properties: dict[str, Any], key: str, lowest: int) -> int:
    """The property ``key`` as a TCP port number; ValueError says how to fix it."""
    value = properties.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 65535:
        raise ValueError(
            f"{key} must be a whole number from {lowest} to 65535, got {value!r}; "
            "fix the resource's properties"
        )
    return value


def _host(properties: dict[str, Any], key: str, default: str | None = None) -> str:
    value = properties.get(key, default)
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ValueError(
            f"{key} must be a host name or address of 1 to 255 characters, got {value!r}; "
            "fix the resource's properties"
        )
    return value


@dataclass
class Connection:
    """One relayed client connection and its byte counts."""

    id: int
    peer: str
    opened: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "peer": self.peer,
            "open_s": round(time.monotonic() - self.opened, 3),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


class TcpForward:
    """Forwards ``listen_host:listen_port`` to ``target_host:target_port``.

    ``listen_port`` 0 lets the system choose a free port; ``stats()`` reports
    the port actually bound.
    """

    @classmethod
    async def health(cls) -> dict[str, Any]:
        """Always ok: a forwarder depends on nothing outside its own process."""
        return {"ok": True}

    def __init__(self, resource_id: str, properties: dict[str, Any]) -> None:
        self.resource_id = resource_id
        self.listen_host = _host(properties, "listen_host", "127.0.0.1")
        self.listen_port = _port(properties, "listen_port", 0)
        self.target_host = _host(properties, "target_host")
        self.target_port = _port(properties, "target_port", 1)
        self._server: asyncio.Server | None = None
        self._open: dict[asyncio.Task[None], Connection] = {}
        self._accepted = 0
        self._failed = 0
        self._bytes_in = 0
        self._bytes_out = 0

    async def attach(self) -> None:
        """Start listening. Raises OSError when the address cannot be bound
        (port in use, or not allowed below 1024 without privileges)."""
        try:
            self._server = await asyncio.start_server(
                self._accept, self.listen_host, self.listen_port, reuse_address=True
            )
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(
                exc.errno,
                f"cannot listen on {self.listen_host}:{self.listen_port} ({reason}); "
                "choose another listen_port or stop what uses it",
            ) from exc
        self.listen_port = self._server.sockets[0].getsockname()[1]
        log.info(
            "%s: forwarding %s:%d to %s:%d",
            self.resource_id,
            self.listen_host,
            self.listen_port,
            self.target_host,
            self.target_port,
        )

    async def detach(self) -> None:
        """Stop listening and close every relayed connection."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._open)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Since Python 3.12 this also waits for the connections: cancel them first.
        if self._server is not None:
            await self._server.wait_closed()

    # -- operations -------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """Counters since attach; ``connections`` is the number open now."""
        return {
            "listening": self._server is not None and self._server.is_serving(),
            "listen_host": self.listen_host,
            "listen_port": self.listen_port,
            "target": f"{self.target_host}:{self.target_port}",
            "connections": len(self._open),
            "accepted": self._accepted,
            "failed": self._failed,
            "bytes_in": self._bytes_in,
            "bytes_out": self._bytes_out,
        }

    async def connections(self) -> list[dict[str, Any]]:
        """The open connections: id, peer address, age and byte counts."""
        return [connection.describe() for connection in self._open.values()]

    # -- relaying ---------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called by the server for each client: start the relay task that we own.

        Not a coroutine on purpose: the server would wrap it in a task of its
        own, and Python 3.11 logs a spurious error when such a task is cancelled.
        """
        self._accepted += 1
        peer = writer.get_extra_info("peername")
        connection = Connection(self._accepted, f"{peer[0]}:{peer[1]}" if peer else "?")
        task = asyncio.get_running_loop().create_task(self._relay(connection, reader, writer))
        self._open[task] = connection
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        del self._open[task]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: relay failed", self.resource_id, exc_info=task.exception())

    async def _relay(
        self, connection: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await self._connect_and_pump(connection, reader, writer)
        finally:
            writer.close()

    async def _connect_and_pump(
        self, connection: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                target = await asyncio.open_connection(self.target_host, self.target_port)
        except (OSError, TimeoutError) as exc:
            self._failed += 1
            log.warning(
                "%s: cannot reach %s:%d: %s",
                self.resource_id,
                self.target_host,
                self.target_port,
                str(exc) or "timed out",
            )
            return
        target_reader, target_writer = target
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, target_writer, connection, inbound=True))
                group.create_task(self._pump(target_reader, writer, connection, inbound=False))
        except* OSError:
            pass  # a reset on either side ends the connection; that is normal
        finally:
            target_writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: Connection,
        inbound: bool,
    ) -> None:
        """Copy until EOF, then pass the EOF on (half-close)."""
        while data := await reader.read(CHUNK):
            writer.write(data)
            if inbound:
                connection.bytes_in += len(data)
                self._bytes_in += len(data)
            else:
                connection.bytes_out += len(data)
                self._bytes_out += len(data)
            await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
