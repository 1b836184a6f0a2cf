"""The kernel's sans-I/O message codec: bytes in -> typed messages out, and back.

One reusable msgspec Encoder and one typed Decoder per codec. ``encode``
writes the payload with ``encode_into`` after four reserved bytes, then fills
in the length, so a frame costs one allocation. The same class serves the
driver channel (``ToKernel`` in, ``ToDriver`` out) and the control socket.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from drivebay.protocol.errors import ProtocolError
from drivebay.protocol.frames import DEFAULT_MAX_FRAME, HEADER, FrameSplitter

In = TypeVar("In")


class MessageCodec(Generic[In]):
    """Frames and decodes messages of type ``incoming``; encodes anything msgspec can."""

    __slots__ = ("_decode", "_encoder", "_peer", "_splitter")

    def __init__(self, incoming: Any, peer: str, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._peer = peer
        self._splitter = FrameSplitter(peer, max_frame)
        self._decode = msgspec.msgpack.Decoder(incoming).decode
        self._encoder = msgspec.msgpack.Encoder()

    def feed(self, data: bytes | bytearray | memoryview) -> list[In]:
        """Decode every message completed by ``data``.

        Raises ProtocolError, naming the peer, for an oversized frame or a
        payload that is not a valid message; the caller must close the channel.
        """
        try:
            return self._splitter.feed_decoded(data, self._decode)
        # Hostile bytes can also surface as bad UTF-8 or too-deep nesting.
        except (
            msgspec.DecodeError,
            msgspec.ValidationError,
            UnicodeDecodeError,
            RecursionError,
        ) as exc:
            raise ProtocolError(f"{self._peer} sent an invalid message: {exc}") from exc

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return self._splitter.pending

    @property
    def announced(self) -> int:
        """The size announced by the frame being received (0: none yet)."""
        return self._splitter.announced

    def encode(self, message: object) -> bytearray:
        """One whole frame holding ``message``."""
        out = bytearray(4)
        self._encoder.encode_into(message, out, 4)
        HEADER.pack_into(out, 0, len(out) - 4)
        return out
