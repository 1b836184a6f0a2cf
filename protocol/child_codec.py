"""The driver child's codec: the same wire format, with or without msgspec.

The child sees messages as plain lists ``[tag, field, ...]`` (the kernel's
``array_like`` Structs encode to exactly that), so it needs no Struct classes.
When the driver's environment has msgspec >= 0.18 it encodes and decodes with
msgspec; otherwise with ``msgpack_lite``, which accepts the same value types
(datetimes, UUIDs, decimals, enums, sets, dataclasses...) and writes the same
bytes, so a driver's result means the same either way.
``DRIVEBAY_CODEC=stdlib`` forces the fallback (tests and benchmarks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .errors import ProtocolError
from .frames import DEFAULT_MAX_FRAME, HEADER, FrameSplitter

Encode = Callable[[Any], bytes]
Decode = Callable[[memoryview], Any]  # msgspec and msgpack_lite both take buffers


def _msgspec_codec() -> tuple[str, Encode, Decode, tuple[type[Exception], ...]] | None:
    try:
        import msgspec
    except ImportError:
        return None
    try:  # a driver may pin any msgspec, old or odd: only >= 0.18 is used
        major, minor = (int(part) for part in msgspec.__version__.split(".")[:2])
        if (major, minor) < (0, 18):
            return None
        decoder = msgspec.msgpack.Decoder()
    except (AttributeError, ValueError, TypeError):
        return None
    return (
        f"msgspec {msgspec.__version__}",
        msgspec.msgpack.Encoder().encode,  # msgspec >= 0.18 has both
        decoder.decode,
        (msgspec.DecodeError, UnicodeDecodeError, RecursionError),
    )


def _stdlib_codec() -> tuple[str, Encode, Decode, tuple[type[Exception], ...]]:
    from . import msgpack_lite

    return "stdlib", msgpack_lite.packb, msgpack_lite.unpackb, (msgpack_lite.MsgpackError,)


class ChildCodec:
    """Frames and (de)serialises ``[tag, ...]`` lists for the driver runtime."""

    __slots__ = ("_decode", "_encode", "_errors", "_peer", "_splitter", "max_frame", "name")

    def __init__(
        self, peer: str = "kernel", max_frame: int = DEFAULT_MAX_FRAME, force: str = ""
    ) -> None:
        force = force or os.environ.get("DRIVEBAY_CODEC", "")
        chosen = None if force == "stdlib" else _msgspec_codec()
        self.name, self._encode, self._decode, self._errors = chosen or _stdlib_codec()
        self._peer = peer
        self.max_frame = max_frame  # what the peer accepts too: a bigger frame ends the channel
        self._splitter = FrameSplitter(peer, max_frame)

    def feed(self, data: bytes | bytearray | memoryview) -> list[list[Any]]:
        """Every message completed by ``data``; ProtocolError on bad input."""
        try:
            messages: list[Any] = self._splitter.feed_decoded(data, self._decode)
        except self._errors as exc:
            raise ProtocolError(f"{self._peer} sent an invalid message: {exc}") from exc
        for message in messages:
            if type(message) is not list or not message or type(message[0]) is not str:
                raise ProtocolError(f"{self._peer} sent a message that is not [tag, ...]")
        return messages

    def encode(self, message: list[Any]) -> bytes:
        """One whole frame holding ``message``."""
        payload = self._encode(message)
        return HEADER.pack(len(payload)) + payload
