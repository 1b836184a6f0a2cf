"""drivebayd's HTTP API as a transport of ``AsyncClient``: aiohttp's client,
over a Unix socket or TCP, any number of requests at once (a connection
each, kept alive and reused). The same requests and replies as
``_http.py`` says."""

from __future__ import annotations

import codecs
import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import aiohttp
import msgspec

from drivebay.client._errors import ConnectionLost, DaemonUnavailable
from drivebay.client._http import CODE_HEADER, NDJSON, parse_url, reply_of
from drivebay.protocol.control import Reply
from drivebay.protocol.errors import RequestError


def _reply(plain: Any) -> Reply:
    """``_http``'s standard-library reply as the control protocol's."""
    return Reply(
        plain.id,
        plain.ok,
        plain.result,
        plain.error,
        plain.code,
        plain.more,
        plain.error_type,
        plain.traceback,
    )


class AsyncHttpExchange:
    def __init__(
        self, url: str, context: ssl.SSLContext | None = None, token: str | None = None
    ) -> None:
        self.url = url
        self._headers = {"Content-Type": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        scheme, where, port = parse_url(url)
        self._unix = where if scheme == "unix" else None
        self._base = "http://localhost" if scheme == "unix" else f"{scheme}://{where}:{port}"
        self._context = context
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector
            if self._unix is not None:
                connector = aiohttp.UnixConnector(path=self._unix)
            else:
                connector = aiohttp.TCPConnector(ssl=self._context or True)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.asynccontextmanager
    async def _post(
        self, command: str, args: Mapping[str, Any]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The answer to ``POST /v1/commands/{command}``, connection errors as ours."""
        await self.open()
        assert self._session is not None
        try:
            body = msgspec.json.encode(args)
        except (TypeError, OverflowError) as exc:
            raise RequestError(f"cannot send that request: {exc}") from exc
        try:
            async with self._session.post(
                f"{self._base}/v1/commands/{command}",
                data=body,
                headers=self._headers,
            ) as response:
                yield response
        except aiohttp.ClientConnectorError as exc:
            raise DaemonUnavailable.because(self.url, exc.os_error) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionLost(f"lost the connection to drivebayd at {self.url}") from exc

    async def one(self, command: str, args: Mapping[str, Any], request_id: int) -> Reply:
        """The reply to a request of one reply (a stream's first chunk)."""
        async with self._post(command, args) as response:
            if response.content_type == "text/plain":
                return Reply(request_id, True, "", more=True)  # the stream is open
            if response.content_type == NDJSON:
                line = await response.content.readline()  # the first record
                return Reply(request_id, True, msgspec.json.decode(line), more=True)
            data = await response.read()
            code = response.headers.get(CODE_HEADER)
        return _reply(reply_of(response.status, code, data, request_id))

    async def replies(
        self, command: str, args: Mapping[str, Any], request_id: int
    ) -> AsyncGenerator[Reply, None]:
        """Send one request and yield its replies (a streaming command's chunks)."""
        async with self._post(command, args) as response:
            if response.content_type == NDJSON:
                async for line in response.content:  # one record a line, as it comes
                    if line.strip():
                        yield Reply(request_id, True, msgspec.json.decode(line), more=True)
                yield Reply(request_id, True)
                return
            if response.content_type != "text/plain":
                data = await response.read()
                code = response.headers.get(CODE_HEADER)
                yield _reply(reply_of(response.status, code, data, request_id))
                return
            yield Reply(request_id, True, "", more=True)  # the stream is open
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            async for chunk in response.content.iter_any():
                if text := decoder.decode(chunk):
                    yield Reply(request_id, True, text, more=True)
            yield Reply(request_id, True)
