"""An asyncio client of the control socket, for programs (and tests, benchmarks).

Many callers may share one ``ControlClient``: requests are multiplexed by id
on the one connection, and each caller awaits its own reply. ``call`` raises
``OperationError`` with the driver's error type when the operation failed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any, cast

from protocol.codec import MessageCodec
from protocol.control import Reply, Request
from protocol.errors import DrivebayError
from protocol.outbox import Outbox


class OperationError(DrivebayError):
    """The daemon answered a request with an error; ``code`` is drivebayctl's exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Connection(asyncio.Protocol):
    def __init__(self, on_reply: Callable[[Reply], None], on_lost: Callable[[], None]) -> None:
        self.codec: MessageCodec[Reply] = MessageCodec(Reply, "drivebayd")
        self.outbox = Outbox(asyncio.get_running_loop())
        self._on_reply = on_reply
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.outbox.attach(self.transport)

    def data_received(self, data: bytes) -> None:
        for reply in self.codec.feed(data):
            self._on_reply(reply)

    def pause_writing(self) -> None:
        self.outbox.pause_writing()

    def resume_writing(self) -> None:
        self.outbox.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.outbox.release()
        self._on_lost()


class ControlClient:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._connection: _Connection | None = None

    @classmethod
    async def connect(cls, path: str) -> ControlClient:
        client = cls()
        loop = asyncio.get_running_loop()
        _, client._connection = await loop.create_unix_connection(
            lambda: _Connection(client._reply, client._lost), path
        )
        return client

    def _reply(self, reply: Reply) -> None:
        future = self._waiting.pop(reply.id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def _lost(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("drivebayd closed the connection"))

    async def request(self, command: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; OperationError on an error reply."""
        connection = self._connection
        if connection is None or connection.transport is None or connection.transport.is_closing():
            raise ConnectionError("not connected to drivebayd")
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        connection.outbox.send(connection.codec.encode(Request(request_id, command, args or {})))
        try:
            reply = await future
        finally:
            self._waiting.pop(request_id, None)
        if not reply.ok:
            raise OperationError(reply.error, reply.code)
        return reply.result

    async def call(
        self,
        resource: str,
        op: str,
        args: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        payload: dict[str, Any] = {"resource": resource, "op": op, "args": args or {}}
        if timeout is not None:
            payload["timeout"] = timeout
        return await self.request("call", payload)

    async def close(self) -> None:
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.close()
            await asyncio.sleep(0)  # let connection_lost run
