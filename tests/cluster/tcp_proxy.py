"""A TCP proxy owned by a test, between nodes and the test's PostgreSQL, that
can black-hole the link: stop forwarding in both directions without closing
anything, as a cable pulled or a partition does, then forward again.

``TcpProxy(target).start()`` listens on 127.0.0.1 (a port of its own) and
forwards each connection to ``target``: a Unix socket path (the throw-away
server of tests/postgres.py listens only there) or ``(host, port)``.
``blackhole`` returns once nothing more passes: bytes already read are held,
new connections are accepted (the kernel completes the handshake) but not
forwarded, so a client sees a peer that answers nothing, never a reset.
``restore`` forwards again, what was held first. ``close`` closes every
socket it opened and ends its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from tests.cluster.loop_thread import LoopThread

CHUNK: Final = 65536
Target = str | tuple[str, int]


class TcpProxy:
    """127.0.0.1:``port`` forwarded to ``target``; ``blackhole``, ``restore``, ``close``."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self._thread = LoopThread("tcp proxy")
        self._server: asyncio.Server | None = None
        self._open: asyncio.Event | None = None  # set: forwarding
        self._tasks: set[asyncio.Task[object]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TcpProxy:
        self._thread.start()
        try:
            self.port = self._thread.call(self._listen())
        except BaseException:
            self._thread.stop()
            raise
        return self

    def url(self, dbname: str, user: str) -> str:
        """A ``postgresql://`` URL of database ``dbname`` through this proxy."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def blackhole(self) -> None:
        """Stop forwarding, both ways, on every connection and new ones; close nothing."""
        self._thread.call(self._set(False))

    def restore(self) -> None:
        """Forward again (what was held while black-holed goes first)."""
        self._thread.call(self._set(True))

    def close(self) -> None:
        """Close the listening socket and every connection, and end the thread."""
        try:
            self._thread.call(self._close())
        finally:
            self._thread.stop()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _listen(self) -> int:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _set(self, forwarding: bool) -> None:
        assert self._open is not None
        if forwarding:
            self._open.set()
        else:
            self._open.clear()

    async def _accepted(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        writers = [client_w]
        self._writers.add(client_w)
        me = asyncio.current_task()
        assert me is not None and self._open is not None
        self._tasks.add(me)
        try:
            await self._open.wait()  # black-holed: accepted, never forwarded
            if isinstance(self.target, str):
                server_r, server_w = await asyncio.open_unix_connection(self.target)
            else:
                server_r, server_w = await asyncio.open_connection(*self.target)
            writers.append(server_w)
            self._writers.add(server_w)
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(client_r, server_w))
                pumps.create_task(self._pump(server_r, client_w))
        except OSError:
            pass  # the target refused: the client sees its connection end
        except asyncio.CancelledError:
            pass  # ``close``: ended here, as asyncio's stream callback expects
        finally:
            self._tasks.discard(me)
            for writer in writers:
                self._writers.discard(writer)
                await _closed(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Bytes from ``reader`` to ``writer`` while open; at the end, EOF onwards."""
        assert self._open is not None
        try:
            while True:
                await self._open.wait()
                data = await reader.read(CHUNK)
                await self._open.wait()  # read just before a blackhole: held until restored
                if not data:
                    # The other side may still answer; the connection ends when both have.
                    writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            writer.close()  # a side reset: so does the other

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):  # none left unless a handler did not end
            await _closed(writer)
        self._writers.clear()
        if self._server is not None:
            await self._server.wait_closed()


async def _closed(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket and wait until it is closed (its fd released)."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5)
