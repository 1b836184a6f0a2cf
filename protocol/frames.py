"""Length-prefixed framing, shared by the kernel's and the child's codec.

A frame is a 4-byte big-endian length followed by that many bytes of one
MessagePack message. ``FrameSplitter`` is sans-I/O: feed it whatever bytes a
read returned (a byte at a time is fine) and it hands back whole payloads.
Standard library only: the driver child loads it.
"""

from __future__ import annotations

import struct

from protocol.errors import ProtocolError

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


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
        buffer = self._buffer
        if buffer:
            buffer += data
            source: bytes | bytearray | memoryview = buffer
        else:
            source = data  # common case: parse the read in place, no copy in
        payloads: list[bytes] = []
        end = len(source)
        pos = 0
        while end - pos >= 4:
            (size,) = HEADER.unpack_from(source, pos)
            if size > self._max_frame:
                raise ProtocolError(
                    f"{self._peer} sent a frame of {size} bytes, over the limit of "
                    f"{self._max_frame} bytes"
                )
            if end - pos - 4 < size:
                break
            payloads.append(bytes(source[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if source is buffer:
            del buffer[:pos]
        elif pos < end:
            buffer += source[pos:]
        return payloads

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return HEADER.pack(len(payload)) + payload
