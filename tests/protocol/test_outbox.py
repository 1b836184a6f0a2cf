"""The coalescing writer: what reaches the transport, and when."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from drivebay.protocol.outbox import CHUNK_BYTES, CHUNK_FRAMES, Outbox, PassFlush
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


# -- with a PassFlush (the kernel's): every frame waits for the end of the pass ---------------


def held(flush: PassFlush, count: int) -> list[tuple[Outbox, RecordingTransport]]:
    boxes = []
    for _ in range(count):
        box = Outbox(asyncio.get_running_loop(), flush)
        transport = RecordingTransport()
        box.attach(transport)  # type: ignore[arg-type]
        boxes.append((box, transport))
    return boxes


@in_loop
async def test_with_a_pass_flush_each_peer_gets_its_frames_of_the_pass_in_one_write() -> None:
    flush = PassFlush(asyncio.get_running_loop())
    (a, to_a), (b, to_b), (c, to_c) = held(flush, 3)
    a.send(b"a1")
    b.send(b"b1")
    a.send(b"a2")
    b.send(b"b2")
    assert to_a.writes == to_b.writes == []  # nothing before the pass ends
    await end_of_pass()
    assert to_a.writes == [b"a1a2"]
    assert to_b.writes == [b"b1b2"]
    assert to_c.writes == []
    c.send(b"c1")  # a new pass: held again, and written at its end
    assert to_c.writes == []
    await end_of_pass()
    assert to_c.writes == [b"c1"]
    assert to_a.writes == [b"a1a2"]


def test_a_pass_flush_writes_the_marked_outboxes_in_the_order_they_were_marked() -> None:
    """Fed by hand, without a running loop: one run writes every held frame."""
    loop = asyncio.new_event_loop()
    try:
        flush = PassFlush(loop)
        order: list[str] = []

        class Named(RecordingTransport):
            def __init__(self, name: str) -> None:
                super().__init__()
                self.name = name

            def write(self, data: bytes | bytearray) -> None:
                order.append(self.name)
                super().write(data)

        boxes = {}
        for name in "xyz":
            box = Outbox(loop, flush)
            box.attach(Named(name))  # type: ignore[arg-type]
            boxes[name] = box
        for name in "zxzy":
            boxes[name].send(name.encode())
        flush.run()
        assert order == ["z", "x", "y"]
        flush.run()  # nothing left: nothing more written
        assert order == ["z", "x", "y"]
    finally:
        loop.close()


def test_a_pass_flush_writes_the_others_when_one_write_raises() -> None:
    loop = asyncio.new_event_loop()
    try:
        flush = PassFlush(loop)

        class Broken(RecordingTransport):
            def write(self, data: bytes | bytearray) -> None:
                raise RuntimeError("broken transport")

        broken, fine = Outbox(loop, flush), Outbox(loop, flush)
        broken.attach(Broken())  # type: ignore[arg-type]
        healthy = RecordingTransport()
        fine.attach(healthy)  # type: ignore[arg-type]
        broken.send(b"a")
        fine.send(b"b")
        with pytest.raises(RuntimeError, match="broken transport"):
            flush.run()
        assert healthy.writes == [b"b"]
        fine.send(b"c")  # a new pass: marked again, written at its end
        flush.run()
        assert healthy.writes == [b"b", b"c"]
    finally:
        loop.close()


@in_loop
async def test_with_a_pass_flush_a_burst_still_streams_in_chunks() -> None:
    ((box, transport),) = held(PassFlush(asyncio.get_running_loop()), 1)
    burst = frames(2 * CHUNK_FRAMES + 3)
    for frame in burst:
        box.send(frame)
    assert transport.writes == [
        b"".join(burst[:CHUNK_FRAMES]),
        b"".join(burst[CHUNK_FRAMES : 2 * CHUNK_FRAMES]),
    ]
    await end_of_pass()
    assert transport.writes[2:] == [b"".join(burst[2 * CHUNK_FRAMES :])]


@in_loop
async def test_flush_writes_what_is_held_at_once_and_the_pass_ends_as_usual() -> None:
    ((box, transport),) = held(PassFlush(asyncio.get_running_loop()), 1)
    box.send(b"refused")
    box.flush()  # before the transport is closed, which would drop it
    assert transport.writes == [b"refused"]
    box.send(b"more")
    await end_of_pass()
    assert transport.writes == [b"refused", b"more"]
    box.flush()  # nothing held: nothing written
    assert transport.writes == [b"refused", b"more"]


@in_loop
async def test_with_a_pass_flush_nothing_is_written_once_the_transport_closes() -> None:
    ((box, transport),) = held(PassFlush(asyncio.get_running_loop()), 1)
    box.send(b"a")
    transport.closing = True
    box.send(b"b")
    await end_of_pass()
    assert transport.writes == []


@in_loop
async def test_every_outbox_of_a_loop_shares_its_pass_flush() -> None:
    loop = asyncio.get_running_loop()
    assert PassFlush.of(loop) is PassFlush.of(loop)
    other = asyncio.new_event_loop()
    try:
        assert PassFlush.of(other) is not PassFlush.of(loop)
    finally:
        other.close()
