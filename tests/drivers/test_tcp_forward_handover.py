"""tcp-forward's handoff and takeover, two instances in this process on real sockets.

The state travels as the kernel carries it: every socket in it is replaced by
a new socket object on a duplicate of its descriptor (what SCM_RIGHTS gives
the new process), so the old instance's copies and the new one's are
distinct, and closing one set must leave the connections to the other.
The end-to-end test of the same through a real daemon is
tests/e2e/test_stateful_forward.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.drivers.bundles import DRIVERS
from tests.helpers import run


@pytest.fixture
def forward() -> Iterator[ModuleType]:
    sys.path.insert(0, str(DRIVERS / "tcp-forward" / "src"))
    try:
        yield importlib.import_module("tcp_forward")
    finally:
        sys.path.remove(str(DRIVERS / "tcp-forward" / "src"))


def carried(value: Any) -> Any:
    """``value`` as the new process receives it: each socket a duplicate descriptor."""
    if isinstance(value, socket.socket):
        return socket.socket(value.family, value.type, value.proto, os.dup(value.fileno()))
    if isinstance(value, dict):
        return {key: carried(item) for key, item in value.items()}
    if isinstance(value, list):
        return [carried(item) for item in value]
    return value


def sockets_in(value: Any) -> list[socket.socket]:
    if isinstance(value, socket.socket):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in sockets_in(item)]
    if isinstance(value, list):
        return [s for item in value for s in sockets_in(item)]
    return []


class Gate:
    """An echo server whose reading can be held: bytes then wait in the forwarder."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.port = 0

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.open.wait()
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def gate_server() -> AsyncIterator[Gate]:
    gate = Gate()
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once when held
    listening.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(gate.echo, sock=listening)
    gate.port = server.sockets[0].getsockname()[1]
    try:
        yield gate
    finally:
        server.close()
        await server.wait_closed()


async def stream(port: int, stop: asyncio.Event) -> tuple[bytes, bytes]:
    """Send random bytes until ``stop``, then EOF; (what was sent, what came back)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = bytearray()
    try:

        async def send() -> None:
            while not stop.is_set():
                chunk = os.urandom(16384)
                sent.extend(chunk)
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()

        sending = asyncio.ensure_future(send())
        received = await reader.read(-1)
        await sending
        return bytes(sent), received
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def held(instance: Any) -> dict[str, Any]:
    """A handoff of ``instance`` once it holds bytes read and not yet written (bounded)."""
    async with asyncio.timeout(10):
        while True:
            state = await instance.handoff()
            flows = [c.get("inbound", {}) for c in state["connections"]]
            if any(flow.get("pending") for flow in flows):
                return state
            await instance.handoff_aborted()
            await asyncio.sleep(0.01)


def test_takeover_continues_every_stream_with_the_bytes_in_flight(forward):
    async def main():
        async with gate_server() as gate:
            props = {"listen_port": 0, "target_host": "127.0.0.1", "target_port": gate.port}
            old = forward.TcpForward("fwd", props)
            await old.attach()
            port = (await old.stats())["listen_port"]
            gate.open.clear()  # the target stops reading: the forwarder's buffer fills
            stop = asyncio.Event()
            client = asyncio.ensure_future(stream(port, stop))
            state = await held(old)
            new = forward.TcpForward("fwd", props)
            await new.takeover(carried(state), "1.0.0")
            await old.detach()  # close() of the old copies ends nothing
            stop.set()
            gate.open.set()
            sent, received = await client
            assert received == sent
            stats = await new.stats()
            assert stats["listen_port"] == port and stats["accepted"] == 1
            assert stats["bytes_in"] == stats["bytes_out"] == len(sent)
            await new.detach()

    run(main())


def test_aborted_handoff_carries_on_and_the_copies_close(forward):
    async def main():
        async with gate_server() as gate:
            props = {"listen_port": 0, "target_host": "127.0.0.1", "target_port": gate.port}
            old = forward.TcpForward("fwd", props)
            await old.attach()
            port = (await old.stats())["listen_port"]
            stop = asyncio.Event()
            gate.open.clear()
            client = asyncio.ensure_future(stream(port, stop))
            state = carried(await held(old))
            # A client that connects now waits in the backlog.
            waiting = asyncio.ensure_future(asyncio.open_connection("127.0.0.1", port))
            for sock in sockets_in(state):  # the failed new instance's copies are closed
                sock.close()
            await old.handoff_aborted()
            stop.set()
            gate.open.set()
            sent, received = await client
            assert received == sent
            reader, writer = await waiting
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            assert (await old.stats())["accepted"] == 2
            await old.detach()

    run(main())


def test_listen_port_zero_keeps_its_port_and_a_new_address_moves(forward):
    async def main():
        async with gate_server() as gate:
            props = {"listen_port": 0, "target_host": "127.0.0.1", "target_port": gate.port}
            first = forward.TcpForward("fwd", props)
            await first.attach()
            port = (await first.stats())["listen_port"]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"one")
            assert await reader.readexactly(3) == b"one"
            second = forward.TcpForward("fwd", {**props, "target_port": gate.port})
            await second.takeover(carried(await first.handoff()), "1.0.0")
            await first.detach()
            assert (await second.stats())["listen_port"] == port
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                other = free.getsockname()[1]
            third = forward.TcpForward("fwd", {**props, "listen_port": other})
            await third.takeover(carried(await second.handoff()), "1.0.0")
            await second.detach()
            assert (await third.stats())["listen_port"] == other
            writer.write(b"two")  # the established connection lives on
            assert await reader.readexactly(3) == b"two"
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            moved_reader, moved_writer = await asyncio.open_connection("127.0.0.1", other)
            moved_writer.write(b"three")
            assert await moved_reader.readexactly(5) == b"three"
            for w in (writer, moved_writer):
                w.close()
            await third.detach()

    run(main())


def test_a_state_of_another_format_is_refused(forward):
    async def main():
        new = forward.TcpForward("fwd", {"listen_port": 0, "target_host": "h", "target_port": 1})
        with pytest.raises(ValueError, match=r"state format 99 from 2\.0\.0 is not 1"):
            await new.takeover({"format": 99}, "2.0.0")

    run(main())


def test_a_new_address_that_cannot_be_bound_refuses_the_takeover(forward):
    async def main():
        async with gate_server() as gate:
            props = {"listen_port": 0, "target_host": "127.0.0.1", "target_port": gate.port}
            old = forward.TcpForward("fwd", props)
            await old.attach()
            port = (await old.stats())["listen_port"]
            with socket.socket() as taken:
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                new = forward.TcpForward("fwd", {**props, "listen_port": taken.getsockname()[1]})
                state = carried(await old.handoff())
                with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
                    await new.takeover(state, "1.0.0")
            for sock in sockets_in(state):
                sock.close()
            await old.handoff_aborted()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"still")
            assert await reader.readexactly(5) == b"still"
            writer.close()
            await old.detach()

    run(main())
