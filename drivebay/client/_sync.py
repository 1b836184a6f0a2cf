"""The blocking client: one connection to the control socket, standard library
only (``protocol.msgpack_lite`` writes the same bytes as msgspec), so that
``drivebayctl status`` starts without importing msgspec or asyncio.

Safe to share between threads: a lock holds the connection for one request
from its send to its last reply, so requests from several threads take turns
(for many requests in flight at once, use ``AsyncClient``).
"""

from __future__ import annotations

import _thread  # threading's lock without threading's import (1 ms of drivebayctl)
import itertools
import socket
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing, suppress
from typing import TYPE_CHECKING, Any

from drivebay.client._endpoint import Endpoint
from drivebay.client._errors import (
    ConnectionLost,
    DaemonUnavailable,
    NotDrivebayd,
    OperationError,
)
from drivebay.protocol.errors import ProtocolError, RequestError
from drivebay.protocol.frames import FrameSplitter, frame
from drivebay.protocol.msgpack_lite import MsgpackError, packb, unpackb

if TYPE_CHECKING:
    import ssl

    from drivebay.client._http import HttpExchange


class Reply:
    """A ``protocol.control.Reply`` as read without msgspec (same fields)."""

    __slots__ = ("code", "error", "error_type", "id", "more", "ok", "result", "traceback")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.id = int(fields.get("id", 0))
        self.ok = bool(fields.get("ok"))
        self.result = fields.get("result")
        self.error = str(fields.get("error", ""))
        self.code = int(fields.get("code", 0))
        self.more = bool(fields.get("more", False))
        self.error_type = str(fields.get("error_type", ""))
        self.traceback = str(fields.get("traceback", ""))

    def raise_error(self) -> None:
        """Raise this reply's ``OperationError`` if it is an error."""
        if not self.ok:
            raise OperationError(self.error, self.code, self.error_type, self.traceback)


def encode_request(request_id: int, command: str, args: Mapping[str, Any]) -> bytes:
    """The request as a frame; ``RequestError`` for a value MessagePack cannot
    carry (an int beyond 64 bits, an arbitrary object)."""
    fields = {"type": "request", "id": request_id, "command": command, "args": dict(args)}
    try:
        return frame(packb(fields))
    except MsgpackError as exc:
        raise RequestError(f"cannot send that request: {exc}") from exc


def request_args(args: Mapping[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """A request's fields, given as a mapping, as keywords, or both."""
    return {**(args or {}), **fields}


def call_args(
    resource: str, op: str, args: Mapping[str, Any] | None, timeout: float | None
) -> dict[str, Any]:
    """The ``call`` request's fields (``kernel/control/schema.py``'s CallRequest)."""
    given = {} if args is None else args if type(args) is dict else dict(args)
    payload: dict[str, Any] = {"resource": resource, "op": op, "args": given}
    if timeout is not None:
        payload["timeout"] = timeout
    return payload


class Client(Endpoint):
    """A blocking client of drivebayd's control socket, or of its HTTP API.

    ``path`` defaults to the socket drivebayctl finds (``control_socket()``).
    ``http`` (``unix:/PATH``, ``http://HOST:PORT``, ``https://HOST:PORT``)
    sends the same requests to the HTTP API instead, ``ssl`` its TLS context,
    ``token`` a bearer token (``drivebayctl token new``) sent with each request.
    The connection opens with ``open()``, ``with``, or the first request, and
    closes with ``close()`` or the end of the ``with`` block.
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
        self._http: HttpExchange | None = None
        if http is not None:
            from drivebay.client._http import HttpExchange  # http.client: only here

            self._http = HttpExchange(http, ssl, token)
        self._sock: socket.socket | None = None
        self._frames = FrameSplitter("drivebayd")
        self._pending: list[Reply] = []
        self._ids = itertools.count(1)
        self._lock = _thread.allocate_lock()
        self._reader: int | None = None  # the thread between a request and its last reply

    @classmethod
    def connect(
        cls,
        path: str | None = None,
        *,
        http: str | None = None,
        ssl: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> Client:
        """A client with its connection open; ``DaemonUnavailable`` if none answers."""
        client = cls(path, http=http, ssl=ssl, token=token)
        client.open()
        return client

    def open(self) -> None:
        """Connect, if not connected; ``DaemonUnavailable`` if no daemon answers."""
        with self._lock:
            if self._http is not None:
                self._http.open()
            else:
                self._open()

    def _open(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable.because(self.path, exc) from exc
        self._sock = sock
        self._frames = FrameSplitter("drivebayd")
        self._pending = []
        return sock

    def close(self) -> None:
        """Close the connection; a request in flight in another thread ends
        with ``ConnectionLost`` (so no lock: the reader holds it)."""
        self._drop()

    def _drop(self) -> None:
        if self._http is not None:
            self._http.close()
        sock, self._sock = self._sock, None
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv
            sock.close()

    def __enter__(self) -> Client:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, command: str, args: Mapping[str, Any] | None = None, /, **fields: Any) -> Any:
        """Send one request and return its result; ``OperationError`` for an
        error reply. ``command`` and the fields are ``kernel/control/schema.py``'s."""
        with closing(self.replies(command, request_args(args, fields))) as replies:
            for reply in replies:
                reply.raise_error()
                return reply.result
        raise ConnectionLost(f"drivebayd at {self.path} sent no reply")  # pragma: no cover

    def stream(
        self, command: str, args: Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Iterator[Any]:
        """Each result of a streaming request (``tail-follow``), as it comes.
        Leaving it early closes the connection (the next request opens another)."""
        with closing(self.replies(command, request_args(args, fields))) as replies:
            for reply in replies:
                reply.raise_error()
                yield reply.result

    def call(
        self,
        resource: str,
        op: str,
        args: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run ``op`` on ``resource`` and return its result; ``OperationError``
        with ``type`` ``OperationFailed`` and the driver's traceback if it raised."""
        return self.request("call", call_args(resource, op, args, timeout))

    def replies(self, command: str, args: Mapping[str, Any]) -> Generator[Reply, None, None]:
        """Send one request and yield its replies as they are, errors included
        (a program that shows them, as drivebayctl does). Left before the last
        reply, the connection closes: the next request opens a new one."""
        request_id = next(self._ids)
        # RequestError before connecting (over HTTP: before sending)
        data = b"" if self._http is not None else encode_request(request_id, command, args)
        if self._reader == _thread.get_ident():  # waiting for the lock would never end
            raise RuntimeError(
                "this thread is still reading the replies of a request on this Client; "
                "use a second Client meanwhile"
            )
        with self._lock:
            self._reader = _thread.get_ident()
            finished = False
            try:
                if self._http is not None:
                    exchange = self._http.replies(command, args, request_id)
                else:
                    exchange = self._exchange(self._open(), request_id, data)
                for reply in exchange:
                    finished = not reply.more and reply.id != 0  # id 0: the connection ends
                    yield reply
            finally:
                self._reader = None
                if not finished:
                    self._drop()

    def _exchange(self, sock: socket.socket, request_id: int, data: bytes) -> Iterator[Reply]:
        try:
            sock.sendall(data)
        except OSError as exc:
            # Refused at once (too many connections): its one line may be here.
            unsent: OSError | None = exc
        else:
            unsent = None
        while True:
            while self._pending:
                reply = self._pending.pop(0)
                if reply.id not in (request_id, 0):
                    continue  # cannot happen: one request at a time
                yield reply
                if not reply.more:
                    return
            self._pending.extend(self._read(sock, unsent))

    def _read(self, sock: socket.socket, unsent: OSError | None) -> list[Reply]:
        try:
            data = sock.recv(1 << 16)
        except OSError as exc:
            if unsent is None:
                raise ConnectionLost(f"lost the connection to drivebayd at {self.path}") from exc
            data = b""
        if not data:
            error = f"drivebayd at {self.path} closed the connection"
            raise ConnectionLost(error) from unsent
        try:
            return [Reply(unpackb(raw)) for raw in self._frames.feed(data)]
        except (ProtocolError, MsgpackError, AttributeError, TypeError, ValueError) as exc:
            raise NotDrivebayd(f"{self.path} does not answer as drivebayd: {exc}") from exc
