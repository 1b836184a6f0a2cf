"""The kernel's end of one driver channel, as an asyncio Protocol.

Bytes from the child go through the sans-I/O codec and come out as typed
messages handed to ``on_message``; a protocol violation (garbage, an oversized
frame) is reported once to ``on_violation`` and the channel closes. Writing
goes through the shared coalescing ``Outbox``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from protocol.codec import MessageCodec
from protocol.errors import ProtocolError
from protocol.messages import ToKernel
from protocol.outbox import Outbox


class KernelChannel(asyncio.Protocol):
    """Reads ``ToKernel`` messages and writes ``ToDriver`` ones."""

    def __init__(
        self,
        codec: MessageCodec[ToKernel],
        on_message: Callable[[ToKernel], None],
        on_violation: Callable[[ProtocolError], None],
    ) -> None:
        self.codec = codec
        self.outbox = Outbox(asyncio.get_running_loop())
        self._on_message = on_message
        self._on_violation = on_violation
        self._transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        self.outbox.attach(transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.codec.feed(data)
        except ProtocolError as exc:
            self.close()
            self._on_violation(exc)
            return
        on_message = self._on_message
        for message in messages:
            on_message(message)

    def send(self, message: object) -> None:
        self.outbox.send(self.codec.encode(message))

    def pause_writing(self) -> None:
        self.outbox.pause_writing()

    def resume_writing(self) -> None:
        self.outbox.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.outbox.release()
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
