"""The HTTP API's connections under the daemon's one cap on client connections.

Every client connection, to the control socket or to the HTTP API (its Unix
socket and its TCP listener), holds a descriptor, and all count against the
kernel's one ``ConnectionGate`` (``control.max_connections``, lowered to what
the descriptor limit leaves for clients: ``kernel/control/limits.py``).
``GatedSite`` listens as aiohttp's sites do, with a protocol factory that
asks the gate first:

- an admitted connection is served by aiohttp's own handler, to which every
  protocol call is passed on, and leaves the gate when it closes;
- one over the cap is answered as the control socket answers it: one line
  and the end, here ``503`` ``application/problem+json`` whose ``detail`` is
  the gate's refusal (what to raise), ``Connection: close``, ``Retry-After``.
  It is written at once, before the request is read: parsing requests is
  what the cap spares. The daemon then ends its side (TLS cannot half-close:
  it waits), drops what the client still sends, and closes when the client
  does, or ``LINGER_S`` later (at once beyond ``LINGER_MAX`` such
  connections), so that the client reads the answer rather than a reset.

The first refusal is logged, and how many were refused once one is admitted
again, as for the control socket.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from drivebay.kernel.control.limits import ConnectionGate
from drivebay.kernel.control.server import LINGER_MAX, LINGER_S
from drivebay.kernel.httpapi.problems import STATUS, plain

log = logging.getLogger("drivebay.http")

FULL = "TooManyConnections"  # the problem's type (problems.STATUS: 503)


@dataclass
class Refusals:
    """What the refused connections of one API hold."""

    refused: int = 0  # connections refused since the gate last admitted one
    lingering: int = 0  # refused connections waiting for their client to close


def refusal_response(gate: ConnectionGate) -> bytes:
    """The whole answer of a connection over the cap."""
    body = msgspec.json.encode(plain(FULL, STATUS[FULL], gate.refusal))
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GatedProtocol(asyncio.Protocol):
    """One connection: aiohttp's handler when the gate admits it, else refused."""

    def __init__(
        self, serve: Callable[[], asyncio.Protocol], gate: ConnectionGate, refusals: Refusals
    ) -> None:
        self._serve = serve
        self._gate = gate
        self._refusals = refusals
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        refusals = self._refusals
        if self._gate.enter():
            if refusals.refused:
                log.info("accepting http connections again (%d refused)", refusals.refused)
                refusals.refused = 0
            self._inner = self._serve()
            self._inner.connection_made(transport)
            return
        if refusals.refused == 0:
            log.warning("http connections at the limit: %s", self._gate.refusal)
        refusals.refused += 1
        self._refuse()

    def _refuse(self) -> None:
        transport, refusals = self._transport, self._refusals
        assert transport is not None
        transport.write(refusal_response(self._gate))
        if refusals.lingering >= LINGER_MAX:
            transport.close()
            return
        if transport.can_write_eof():
            transport.write_eof()
        refusals.lingering += 1
        self._linger = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        # refused: what the client still sends is dropped

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        assert self._transport is not None
        self._transport.close()  # refused, and the client is done: close
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None
            self._gate.leave()
            return
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
            self._refusals.lingering -= 1


class GatedSite(web.BaseSite):
    """An aiohttp site (a Unix or TCP listener) whose connections pass ``gate``.

    ``where`` is what ``loop.create_server`` takes besides the factory:
    ``sock=`` or ``host=``, ``port=``."""

    __slots__ = ("_gate", "_refusals", "_where")

    def __init__(
        self,
        runner: web.BaseRunner,
        gate: ConnectionGate,
        refusals: Refusals,
        ssl_context: ssl.SSLContext | None = None,
        **where: Any,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._gate = gate
        self._refusals = refusals
        self._where = where

    @property
    def name(self) -> str:
        return str(self._where)

    async def start(self) -> None:
        await super().start()
        serve = self._runner.server
        assert serve is not None
        gate, refusals = self._gate, self._refusals
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GatedProtocol(serve, gate, refusals),
            ssl=self._ssl_context,
            backlog=self._backlog,
            **self._where,
        )
