"""Length-prefixed framing, shared by the kernel's and the child's codec.

A frame is a 4-byte big-endian length followed by that many bytes of one
MessagePack message. ``FrameSplitter`` is sans-I/O: feed it whatever bytes a
read returned (a byte at a time is fine) and it hands back whole payloads.
Standard library only: the driver child loads it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

from .errors import ProtocolError

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
T = TypeVar("T")


class FrameSplitter:
    """Splits a byte stream into frame payloads, refusing oversized frames."""

    __slots__ = ("_buffer", "_max_frame", "_peer")

    def __init__(self, peer: str, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._peer = peer
        self._max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data``; return every payload now complete, in order.

        Raises ProtocolError when a frame announces more than the maximum; the
        stream cannot be resynchronised after that, so the caller closes it.
        """
        return self.feed_decoded(data, bytes)

    def feed_decoded(
        self, data: bytes | bytearray | memoryview, decode: Callable[[memoryview], T]
    ) -> list[T]:
        """``feed``, handing each payload to ``decode`` as a memoryview slice:
        a decoder that copies what it keeps (msgspec, msgpack_lite) then reads
        the frame where it lies, with no copy of the payload."""
        buffer = self._buffer
        if buffer:
            buffer += data
            view = memoryview(buffer)
        else:
            view = memoryview(data)  # common case: parse the read in place
        decoded: list[T] = []
        end = len(view)
        pos = 0
        while end - pos >= 4:
            (size,) = HEADER.unpack_from(view, pos)
            if size > self._max_frame:
                raise ProtocolError(
                    f"{self._peer} sent a frame of {size} bytes, over the limit of "
                    f"{self._max_frame} bytes"
                )
            if end - pos - 4 < size:
                break
            decoded.append(decode(view[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if buffer:
            del view  # no export may outlive this before the buffer shrinks
            del buffer[:pos]
        elif pos < end:
            buffer += view[pos:]
        return decoded

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    @property
    def announced(self) -> int:
        """The size the partly received frame announced (0: none, or its length
        prefix is not complete yet): lets a server refuse what it would buffer."""
        buffer = self._buffer
        if len(buffer) < HEADER.size:
            return 0
        size: int = HEADER.unpack_from(buffer, 0)[0]
        return size


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return HEADER.pack(len(payload)) + payload
