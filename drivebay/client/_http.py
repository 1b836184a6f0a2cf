"""drivebayd's HTTP API as a transport of the blocking ``Client`` (standard
library only: ``http.client`` over a Unix or TCP socket).

Each request goes as ``POST /v1/commands/{command}`` with its fields as the
JSON body; the answer comes back as the control socket's replies: a result
with its exit status (the ``Drivebay-Code`` header), a problem (RFC 9457) as
an error reply with the same ``error_type``, ``code`` and ``traceback``, and
a streaming command's ``text/plain`` body as an empty first reply once it
is open (the tail, on the control socket, is the first reply), then one
reply per chunk that arrives.
"""

from __future__ import annotations

import codecs
import http.client
import json
import socket
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

from drivebay.client._errors import ConnectionLost, DaemonUnavailable, NotDrivebayd
from drivebay.client._sync import Reply
from drivebay.protocol.errors import RequestError

CODE_HEADER = "Drivebay-Code"
NDJSON = "application/x-ndjson"


def parse_url(url: str) -> tuple[str, str, int | None]:
    """``(scheme, socket path or host, port)`` of ``unix:/PATH``,
    ``http://HOST:PORT`` or ``https://HOST:PORT``; ``ValueError`` otherwise."""
    if url.startswith("unix:"):
        return "unix", url.removeprefix("unix:").removeprefix("//"), None
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep:
        raise ValueError(f"{url!r}: give unix:/PATH, http://HOST:PORT or https://HOST:PORT")
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        host, port = rest.rstrip("/"), "443" if scheme == "https" else "80"
    return scheme, host.removeprefix("[").removesuffix("]"), int(port)


def reply_of(status: int, code: str | None, data: bytes, request_id: int = 0) -> Reply:
    """The reply an answer of one body stands for; ``NotDrivebayd`` if it is
    not drivebayd's JSON."""
    try:
        body = json.loads(data) if data else None
    except ValueError as exc:
        raise NotDrivebayd(f"the answer is not drivebayd's JSON: {exc}") from exc
    if status < 400:
        return Reply({"id": request_id, "ok": True, "result": body, "code": int(code or 0)})
    if not isinstance(body, dict) or "detail" not in body:
        raise NotDrivebayd(f"HTTP {status} without a drivebay problem: {data[:200]!r}")
    return Reply(
        {
            "id": request_id,
            "ok": False,
            "error": body["detail"],
            "code": body.get("code", 1),
            "error_type": body.get("type", ""),
            "traceback": body.get("traceback") or "",
        }
    )


def encode_args(args: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(dict(args), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise RequestError(f"cannot send that request: {exc}") from exc


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class HttpExchange:
    """One keep-alive connection to the HTTP API at ``url``; one request at
    a time (``Client``'s lock sees to that)."""

    def __init__(
        self, url: str, context: ssl.SSLContext | None = None, token: str | None = None
    ) -> None:
        self.url = url
        self._target = parse_url(url)
        self._context = context
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._connection: http.client.HTTPConnection | None = None
        self._used = False  # the connection has carried a request: it may have been closed

    def open(self) -> None:
        connection = self._connect()
        if connection.sock is None:
            try:
                connection.connect()
            except OSError as exc:
                self.close()
                raise DaemonUnavailable.because(self.url, exc) from exc

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            scheme, where, port = self._target
            if scheme == "unix":
                self._connection = _UnixConnection(where)
            elif scheme == "https":
                self._connection = http.client.HTTPSConnection(where, port, context=self._context)
            else:
                self._connection = http.client.HTTPConnection(where, port)
            self._used = False
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def replies(self, command: str, args: Mapping[str, Any], request_id: int) -> Iterator[Reply]:
        """Send one request and yield its replies; leaving early closes the connection."""
        body = encode_args(args)
        response = self._send(f"/v1/commands/{command}", body)
        finished = False
        try:
            if response.getheader("Content-Type", "").startswith("text/plain"):
                # "" first: the stream is open (the tail, if any, comes next)
                yield Reply({"id": request_id, "ok": True, "result": "", "more": True})
                decoder = codecs.getincrementaldecoder("utf-8")("replace")
                while chunk := response.read1(1 << 16):
                    if text := decoder.decode(chunk):
                        yield Reply({"id": request_id, "ok": True, "result": text, "more": True})
                finished = True  # read to its end: the connection may carry another
                yield Reply({"id": request_id, "ok": True})
            elif response.getheader("Content-Type", "").startswith(NDJSON):
                for line in response:  # one record a line, as it comes
                    if line.strip():
                        record = json.loads(line)
                        yield Reply({"id": request_id, "ok": True, "result": record, "more": True})
                finished = True
                yield Reply({"id": request_id, "ok": True})
            else:
                code, data = response.getheader(CODE_HEADER), response.read()
                finished = True
                yield reply_of(response.status, code, data, request_id)
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionLost(f"lost the connection to drivebayd at {self.url}") from exc
        finally:
            if not finished or response.will_close:
                self.close()

    def _send(self, path: str, body: bytes) -> http.client.HTTPResponse:
        headers = self._headers
        for attempt in (1, 2):
            reused = self._used
            connection = self._connect()
            try:
                connection.request("POST", path, body, headers)
                self._used = True
                return connection.getresponse()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # an idle connection the daemon had closed: once more, anew
                raise ConnectionLost(f"drivebayd at {self.url} closed the connection") from exc
            except OSError as exc:
                self.close()
                raise DaemonUnavailable.because(self.url, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover
