"""Coalescing frame writer, shared by the kernel's channel and the child runtime.

The first frame of a loop pass is written at once (a lone request pays no
extra latency); the frames that follow in the same pass are joined into
writes of ``CHUNK_FRAMES`` frames (or ``CHUNK_BYTES``), the last at the end
of the pass. Chunks rather than one write per pass: the peer starts on the
first frames of a burst while this side still produces the rest, so both
processes work at once instead of taking turns (measured: 64 calls in
flight, 46k calls/s with one write per pass, 80k with chunks of 8).
``writable`` lets a sender wait only when the transport reported itself
full. Standard library only.
"""

from __future__ import annotations

import asyncio

CHUNK_FRAMES = 8
CHUNK_BYTES = 64 * 1024


class Outbox:
    """Writes whole frames to one transport."""

    __slots__ = ("_batch", "_batch_bytes", "_loop", "_transport", "_writable")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.WriteTransport | None = None
        self._batch: list[bytes | bytearray] | None = None  # None: nothing sent this pass
        self._batch_bytes = 0
        self._writable = asyncio.Event()
        self._writable.set()

    def attach(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport

    def send(self, frame: bytes | bytearray) -> None:
        """Queue ``frame``; dropped silently once the transport is closing."""
        if self._batch is None:
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            transport.write(frame)
            self._batch = []
            self._loop.call_soon(self._end_pass)
        else:
            batch = self._batch
            batch.append(frame)
            self._batch_bytes += len(frame)
            if len(batch) >= CHUNK_FRAMES or self._batch_bytes >= CHUNK_BYTES:
                self._batch = []
                self._flush(batch)

    def send_threadsafe(self, frame: bytes | bytearray) -> None:
        """``send`` from a thread other than the loop's."""
        self._loop.call_soon_threadsafe(self.send, frame)

    def _end_pass(self) -> None:
        batch, self._batch = self._batch, None
        if batch:
            self._flush(batch)

    def _flush(self, batch: list[bytes | bytearray]) -> None:
        self._batch_bytes = 0
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    # Flow control, called by the owning Protocol.
    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    @property
    def full(self) -> bool:
        return not self._writable.is_set()

    async def wait_writable(self) -> None:
        """Return when the transport takes writes again (callers add a deadline)."""
        await self._writable.wait()

    def release(self) -> None:
        """The transport is gone: wake anyone waiting to write."""
        self._writable.set()
