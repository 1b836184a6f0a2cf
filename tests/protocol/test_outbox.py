"""The coalescing writer: what reaches the transport, and when."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from drivebay.protocol.outbox import CHUNK_BYTES, CHUNK_FRAMES, Outbox
from tests.helpers import run


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def wrapper() -> None:
        run(test())

    return wrapper


class RecordingTransport:
    """Keeps every ``write`` as one element: the Outbox's syscalls, as seen by the peer."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing


def frames(count: int, size: int = 10) -> list[bytes]:
    return [bytes([n % 256]) * size for n in range(count)]


async def outbox() -> tuple[Outbox, RecordingTransport]:
    box = Outbox(asyncio.get_running_loop())
    transport = RecordingTransport()
    box.attach(transport)  # type: ignore[arg-type]
    return box, transport


async def end_of_pass() -> None:
    await asyncio.sleep(0)  # the Outbox's end-of-pass callback was queued before this wake-up


@in_loop
async def test_a_lone_frame_is_written_at_once() -> None:
    box, transport = await outbox()
    box.send(b"one")
    assert transport.writes == [b"one"]
    await end_of_pass()
    assert transport.writes == [b"one"]


@in_loop
async def test_a_burst_streams_in_chunks_and_ends_with_the_pass() -> None:
    box, transport = await outbox()
    burst = frames(1 + 2 * CHUNK_FRAMES + 3)
    for frame in burst:
        box.send(frame)
    # The first at once, then every CHUNK_FRAMES as they come: the peer can start.
    assert transport.writes == [
        burst[0],
        b"".join(burst[1 : 1 + CHUNK_FRAMES]),
        b"".join(burst[1 + CHUNK_FRAMES : 1 + 2 * CHUNK_FRAMES]),
    ]
    await end_of_pass()
    assert transport.writes[3:] == [b"".join(burst[1 + 2 * CHUNK_FRAMES :])]
    assert b"".join(transport.writes) == b"".join(burst)


@in_loop
async def test_large_frames_are_not_held_back() -> None:
    box, transport = await outbox()
    big = frames(3, CHUNK_BYTES)
    for frame in big:
        box.send(frame)
    assert transport.writes == big
    await end_of_pass()
    assert transport.writes == big


@in_loop
async def test_the_next_pass_starts_with_an_immediate_write_again() -> None:
    box, transport = await outbox()
    box.send(b"a")
    box.send(b"b")
    await end_of_pass()
    box.send(b"c")
    assert transport.writes == [b"a", b"b", b"c"]


@in_loop
async def test_nothing_is_written_once_the_transport_closes() -> None:
    box, transport = await outbox()
    box.send(b"a")
    box.send(b"b")
    transport.closing = True
    box.send(b"c")
    await end_of_pass()
    assert transport.writes == [b"a"]
