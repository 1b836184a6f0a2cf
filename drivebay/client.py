"""An asyncio client of the control socket, for programs (and tests, benchmarks).

Many callers may share one ``ControlClient``: requests are multiplexed by id
on the one connection, and each caller awaits its own reply. What each
command's ``args`` and result hold is ``kernel/control/schema.py``
(``docs/control-schema.json``). ``call`` raises
``OperationError`` with the driver's error type when the operation failed; a
connection the daemon refused (too many connections, a request over a bound)
raises ``OperationError`` with the daemon's line from every request.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from drivebay.kernel.drivers.channel import FramedChannel
from drivebay.protocol.codec import MessageCodec
from drivebay.protocol.control import Reply, Request
from drivebay.protocol.errors import DrivebayError


class OperationError(DrivebayError):
    """The daemon answered a request with an error; ``code`` is drivebayctl's
    exit code, ``type`` the drivebay error's name (``OperationFailed``,
    ``CallTimeout``, ``NoSuchName``, ``RequestError`` for a malformed request,
    ...; empty for a refused connection), ``traceback`` an operation's own."""

    def __init__(self, message: str, code: int, type: str = "", traceback: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.type = type
        self.traceback = traceback


class ControlClient:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._connection: FramedChannel[Reply] | None = None
        self._refusal: OperationError | None = None  # the daemon's word on closing

    @classmethod
    async def connect(cls, path: str) -> ControlClient:
        client = cls()
        loop = asyncio.get_running_loop()
        codec: MessageCodec[Reply] = MessageCodec(Reply, "drivebayd")
        channel = FramedChannel(codec, client._reply, client._violation, on_lost=client._lost)
        await loop.create_unix_connection(lambda: channel, path)
        client._connection = channel
        return client

    def _reply(self, reply: Reply) -> None:
        if reply.id == 0 and not reply.ok:  # about the connection: refused, or closing
            self._refusal = OperationError(reply.error, reply.code)
            self._fail_all(self._refusal)
            return
        future = self._waiting.pop(reply.id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def _violation(self, error: Exception) -> None:
        self._fail_all(ConnectionError(f"drivebayd sent garbage: {error}"))

    def _lost(self) -> None:
        self._fail_all(self._refusal or ConnectionError("drivebayd closed the connection"))

    def _fail_all(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)

    async def request(self, command: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; OperationError on an error reply."""
        connection = self._connection
        if self._refusal is not None:
            raise self._refusal
        if connection is None or connection.closing:
            raise ConnectionError("not connected to drivebayd")
        request_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        connection.send(Request(request_id, command, args or {}))
        try:
            reply = await future
        finally:
            self._waiting.pop(request_id, None)
        if not reply.ok:
            raise OperationError(reply.error, reply.code, reply.error_type, reply.traceback)
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
        if self._connection is not None:
            self._connection.close()
            await asyncio.sleep(0)  # let connection_lost run
