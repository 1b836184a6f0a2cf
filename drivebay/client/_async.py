"""The asyncio client: many requests in flight on one connection.

Requests are multiplexed by id: any number of tasks may share one
``AsyncClient``, and each awaits its own replies. Uses msgspec and the
daemon's own message types (``protocol.control``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from drivebay.client._endpoint import Endpoint
from drivebay.client._errors import (
    ConnectionLost,
    DaemonUnavailable,
    NotDrivebayd,
    OperationError,
)
from drivebay.client._sync import call_args, request_args
from drivebay.kernel.drivers.channel import FramedChannel
from drivebay.protocol.codec import MessageCodec
from drivebay.protocol.control import Reply, Request
from drivebay.protocol.errors import RequestError

if TYPE_CHECKING:
    import ssl

    from drivebay.client._async_http import AsyncHttpExchange


def _raise_error(reply: Reply) -> None:
    if not reply.ok:
        raise OperationError(reply.error, reply.code, reply.error_type, reply.traceback)


class AsyncClient(Endpoint):
    """An asyncio client of drivebayd's control socket, or of its HTTP API.

    ``path`` defaults to the socket drivebayctl finds (``control_socket()``).
    ``http`` (``unix:/PATH``, ``http://HOST:PORT``, ``https://HOST:PORT``)
    sends the same requests to the HTTP API instead, ``ssl`` its TLS context,
    ``token`` a bearer token (``drivebayctl token new``) sent with each request.
    The connection opens with ``await open()``, ``async with`` or
    ``await AsyncClient.connect(path)``, and closes with ``await close()``.
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        http: str | None = None,
        ssl: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        self._path = path
        self._http: AsyncHttpExchange | None = None
        if http is not None:
            from drivebay.client._async_http import AsyncHttpExchange  # aiohttp: only here

            self._http = AsyncHttpExchange(http, ssl, token)
        self._ids = itertools.count(1)
        # Each request's replies: a future for a request of one reply (the
        # common case, and the fast one), a queue for a stream. None: the
        # connection ended (_broken says why).
        self._futures: dict[int, asyncio.Future[Reply | None]] = {}
        self._streams: dict[int, asyncio.Queue[Reply | None]] = {}
        self._connection: FramedChannel[Reply] | None = None
        self._broken: Exception | None = None

    @classmethod
    async def connect(
        cls,
        path: str | None = None,
        *,
        http: str | None = None,
        ssl: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> AsyncClient:
        """A client with its connection open; ``DaemonUnavailable`` if none answers."""
        client = cls(path, http=http, ssl=ssl, token=token)
        await client.open()
        return client

    async def open(self) -> None:
        """Connect, if not connected; ``DaemonUnavailable`` if no daemon answers
        (over HTTP: at the first request)."""
        if self._http is not None:
            await self._http.open()
            return
        if self._connection is not None and not self._connection.closing:
            return
        loop = asyncio.get_running_loop()
        codec: MessageCodec[Reply] = MessageCodec(Reply, "drivebayd")
        channel = FramedChannel(codec, self._reply, self._violation, on_lost=self._lost)
        self._broken = None  # before connecting: a refusal may come with the connection
        try:
            await loop.create_unix_connection(lambda: channel, self.path)
        except OSError as exc:
            raise DaemonUnavailable.because(self.path, exc) from exc
        self._connection = channel

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._connection is not None:
            self._connection.close()
            await asyncio.sleep(0)  # let connection_lost run

    async def __aenter__(self) -> AsyncClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def request(
        self, command: str, args: Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Any:
        """Send one request and return its result; ``OperationError`` for an
        error reply. ``command`` and the fields are ``kernel/control/schema.py``'s."""
        return await self._one(command, request_args(args, fields))

    async def _one(self, command: str, args: dict[str, Any]) -> Any:
        """Send a request of one reply and return its result (the hot path:
        a future, no copy of ``args``)."""
        if self._http is not None:
            answer = await self._http.one(command, args, next(self._ids))
            _raise_error(answer)
            return answer.result
        connection = self._connection
        if self._broken is not None or connection is None or connection.closing:
            request_id, connection = self._next_request()  # raises what is wrong
        else:
            request_id = next(self._ids)
        future: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        try:
            try:
                connection.send(Request(request_id, command, args))
            except (TypeError, OverflowError) as exc:  # msgspec cannot encode a value
                raise RequestError(f"cannot send that request: {exc}") from exc
            reply = await future
        finally:
            self._futures.pop(request_id, None)
        if reply is None:
            raise self._broken or ConnectionLost("drivebayd closed the connection")
        if not reply.ok:
            _raise_error(reply)
        return reply.result

    async def stream(
        self, command: str, args: Mapping[str, Any] | None = None, /, **fields: Any
    ) -> AsyncIterator[Any]:
        """Each result of a streaming request (``tail-follow``), as it comes.
        Leave it through ``contextlib.aclosing``: its later replies are then
        dropped (the daemon streams until the connection closes)."""
        async with aclosing(self.replies(command, request_args(args, fields))) as replies:
            async for reply in replies:
                _raise_error(reply)
                yield reply.result

    async def call(
        self,
        resource: str,
        op: str,
        args: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run ``op`` on ``resource`` and return its result; ``OperationError``
        with ``type`` ``OperationFailed`` and the driver's traceback if it raised."""
        return await self._one("call", call_args(resource, op, args, timeout))

    async def replies(self, command: str, args: Mapping[str, Any]) -> AsyncGenerator[Reply, None]:
        """Send one request and yield its replies as they are, errors included."""
        if self._http is not None:
            async with aclosing(self._http.replies(command, args, next(self._ids))) as replies:
                async for answer in replies:
                    yield answer
            return
        request_id, connection = self._next_request()
        queue: asyncio.Queue[Reply | None] = asyncio.Queue()
        self._streams[request_id] = queue
        try:
            self._send(connection, request_id, command, args)
            while True:
                reply = await queue.get()
                if reply is None:
                    raise self._broken or ConnectionLost("drivebayd closed the connection")
                yield reply
                if not reply.more:
                    return
        finally:
            self._streams.pop(request_id, None)

    def _reply(self, reply: Reply) -> None:
        if reply.id == 0 and not reply.ok:  # about the connection: refused, or closing
            self._broken = OperationError(reply.error, reply.code)
            self._fail_all()
            return
        future = self._futures.pop(reply.id, None)
        if future is not None:
            if not future.done():
                future.set_result(reply)
            return
        queue = self._streams.get(reply.id)
        if queue is not None:
            queue.put_nowait(reply)

    def _violation(self, error: Exception) -> None:
        self._broken = NotDrivebayd(f"{self.path} does not answer as drivebayd: {error}")
        self._fail_all()

    def _lost(self) -> None:
        if self._broken is None:
            self._broken = ConnectionLost(f"drivebayd at {self.path} closed the connection")
        self._fail_all()

    def _fail_all(self) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_result(None)
        for queue in self._streams.values():
            queue.put_nowait(None)

    def _next_request(self) -> tuple[int, FramedChannel[Reply]]:
        """A fresh request id and the open connection to send it on."""
        connection = self._connection
        if self._broken is not None:
            raise self._broken
        if connection is None or connection.closing:
            raise ConnectionLost(f"not connected to drivebayd at {self.path}; open() first")
        return next(self._ids), connection

    @staticmethod
    def _send(
        connection: FramedChannel[Reply], request_id: int, command: str, args: Mapping[str, Any]
    ) -> None:
        try:
            connection.send(Request(request_id, command, dict(args)))
        except (TypeError, OverflowError) as exc:  # msgspec cannot encode a value
            raise RequestError(f"cannot send that request: {exc}") from exc
