"""One framed msgspec connection, as an asyncio Protocol.

The same plumbing serves the kernel's end of every driver channel, the control
server's connections and the control client: bytes go through the sans-I/O
codec and come out as typed messages handed to ``on_message``; a protocol
violation (garbage, an oversized frame) is reported once to ``on_violation``
and the connection closes. Writing goes through the shared coalescing
``Outbox``, which also carries the transport's flow control. Every channel of
a loop shares the loop's ``PassFlush``: frames are written at the end of the
loop pass, grouped by peer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from drivebay.protocol.codec import MessageCodec
from drivebay.protocol.errors import ProtocolError
from drivebay.protocol.outbox import Outbox, PassFlush

In = TypeVar("In")


class FramedChannel(asyncio.Protocol, Generic[In]):
    """Reads messages of one type, writes any message msgspec can encode."""

    def __init__(
        self,
        codec: MessageCodec[In],
        on_message: Callable[[In], None],
        on_violation: Callable[[ProtocolError], None],
        on_made: Callable[[asyncio.Transport], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.codec = codec
        loop = asyncio.get_running_loop()
        self.outbox = Outbox(loop, PassFlush.of(loop))
        self._on_message = on_message
        self._on_violation = on_violation
        self._on_made = on_made
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.outbox.attach(self.transport)
        if self._on_made is not None:
            self._on_made(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.codec.feed(data)
        except ProtocolError as exc:
            self._on_violation(exc)
            self.close()
            return
        on_message = self._on_message
        for message in messages:
            on_message(message)

    def send(self, message: object) -> None:
        """Send a message, or a frame ``codec.encode`` made of one (a ``bytearray``)."""
        self.outbox.send(message if type(message) is bytearray else self.codec.encode(message))

    def pause_writing(self) -> None:
        self.outbox.pause_writing()

    def resume_writing(self) -> None:
        self.outbox.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.outbox.release()
        if not self.lost.done():
            self.lost.set_result(None)
        if self._on_lost is not None:
            self._on_lost()

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        """Close once what was sent is written (the transport writes it out)."""
        if self.transport is not None:
            self.outbox.flush()
            self.transport.close()
