"""The tcp-forward bundle, run in a real driver child, relaying to a real echo server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import socket
from collections.abc import AsyncIterator

import pytest

from drivebay.kernel.drivers.state_move import move_state
from drivebay.protocol.errors import HandoverFailed, OperationFailed
from tests.drivers.bundles import bundle_copy, bundle_spec, until
from tests.drivers.test_tcp_forward_handover import gate_server, stream
from tests.helpers import run, started


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then close: a target that honours half-close."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_relays_both_ways_and_counts(tmp_path):
    async def main():
        async with echo_server() as target, started(bundle_spec(tmp_path, "tcp-forward")) as proc:
            assert await proc.health() == {"ok": True}
            props = {"listen_port": 0, "target_host": "127.0.0.1", "target_port": target}
            await proc.attach("fwd", props)
            stats = await proc.call("fwd", "stats", {})
            assert stats["listening"] and stats["listen_port"] > 0
            assert stats["target"] == f"127.0.0.1:{target}"
            payload = os.urandom(1 << 20)  # larger than any buffer: exercises back-pressure
            async with client(stats["listen_port"]) as (reader, writer):
                writer.write(payload)
                await writer.drain()
                assert await reader.readexactly(len(payload)) == payload
                [open_one] = await proc.call("fwd", "connections", {})
                assert open_one["bytes_in"] == open_one["bytes_out"] == len(payload)
                writer.write_eof()  # half-close travels through: the echo server ends
                assert await reader.read() == b""

            async def all_closed():
                return (await proc.call("fwd", "stats", {}))["connections"] == 0

            await until(all_closed)
            stats = await proc.call("fwd", "stats", {})
            assert stats["accepted"] == 1 and stats["failed"] == 0
            assert stats["bytes_in"] == stats["bytes_out"] == len(payload)
            assert await proc.call("fwd", "connections", {}) == []

    run(main())


def test_detach_closes_listener_and_connections(tmp_path, caplog):
    async def main():
        async with echo_server() as target, started(bundle_spec(tmp_path, "tcp-forward")) as proc:
            props = {"listen_port": 0, "target_host": "127.0.0.1", "target_port": target}
            await proc.attach("fwd", props)
            port = (await proc.call("fwd", "stats", {}))["listen_port"]
            async with client(port) as (reader, writer):
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                await proc.detach("fwd")
                assert await reader.read() == b""  # closed by the forwarder
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)

    run(main())
    # The driver's log records reach the kernel's log: closing is no error.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_unreachable_target_closes_the_client(tmp_path):
    async def main():
        async with started(bundle_spec(tmp_path, "tcp-forward")) as proc:
            props = {"listen_port": 0, "target_host": "127.0.0.1", "target_port": _closed_port()}
            await proc.attach("fwd", props)
            port = (await proc.call("fwd", "stats", {}))["listen_port"]
            async with client(port) as (reader, _):
                assert await reader.read() == b""
            stats = await proc.call("fwd", "stats", {})
            assert stats["failed"] == 1 and stats["bytes_in"] == 0

    run(main())


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"listen_port": 70000, "target_host": "h", "target_port": 1}, "listen_port must be"),
        ({"listen_port": 0, "target_host": "", "target_port": 1}, "target_host must be"),
        ({"listen_port": 0, "target_host": "h", "target_port": 0}, "target_port must be"),
        ({"listen_port": 0, "target_host": "h"}, "target_port must be"),
    ],
)
def test_bad_properties_refuse_attach(tmp_path, props, message):
    async def main():
        async with started(bundle_spec(tmp_path, "tcp-forward")) as proc:
            with pytest.raises(OperationFailed, match=f"ValueError: {message}"):
                await proc.attach("fwd", props)

    run(main())


def test_port_in_use_refuses_attach(tmp_path):
    async def main():
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            async with started(bundle_spec(tmp_path, "tcp-forward")) as proc:
                props = {"listen_port": port, "target_host": "127.0.0.1", "target_port": 9}
                expected = f"cannot listen on 127.0.0.1:{port} (Address already in use); choose"
                with pytest.raises(OperationFailed, match=re.escape(expected)):
                    await proc.attach("fwd", props)

    run(main())


async def _handed_off_holding_bytes(proc, resource: str):
    """A handoff of ``resource`` in ``proc`` once its state holds bytes read
    and not yet written (aborted and asked again until then, bounded)."""
    async with asyncio.timeout(10):
        while True:
            handed = await proc.handoff(resource)
            connections = handed.state["connections"]
            if any(c.get("inbound", {}).get("pending") for c in connections):
                return handed
            handed.close()
            await proc.handoff_end(resource, taken=False)
            await asyncio.sleep(0.01)


def test_an_upgrade_carries_the_bytes_in_flight_to_the_new_process(tmp_path):
    """Between two real driver processes: the listener and the connection
    move with the bytes the old one held; a takeover that fails (its new
    address is taken) leaves everything with the old process."""
    newer = bundle_copy(tmp_path, "tcp-forward", "9.0.0")
    newer_spec = dataclasses.replace(
        bundle_spec(tmp_path, "tcp-forward"), version="9.0.0", src=newer / "src"
    )

    async def main():
        old_spec = bundle_spec(tmp_path, "tcp-forward")
        async with gate_server() as gate, started(old_spec) as old, started(newer_spec) as new:
            assert {"handoff", "takeover", "handoff_aborted"} <= old.hooks
            props = {"listen_port": 0, "target_host": "127.0.0.1", "target_port": gate.port}
            await old.attach("fwd", props)
            port = (await old.call("fwd", "stats", {}))["listen_port"]
            gate.open.clear()
            stop = asyncio.Event()
            streaming = asyncio.ensure_future(stream(port, stop))
            handed = await _handed_off_holding_bytes(old, "fwd")
            try:
                await new.takeover("fwd", props, handed, old.spec.version)
            finally:
                handed.close()
            await old.handoff_end("fwd", taken=True)
            stop.set()
            gate.open.set()
            sent, received = await streaming
            assert received == sent
            stats = await new.call("fwd", "stats", {})
            assert stats["listen_port"] == port and stats["bytes_out"] == len(sent)
            with socket.socket() as taken:
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                elsewhere = {**props, "listen_port": taken.getsockname()[1]}
                with pytest.raises(HandoverFailed, match="cannot listen on"):
                    await move_state(new, old, "fwd", elsewhere, "9.0.0")
            async with client(port) as (reader, writer):
                writer.write(b"still")
                assert await reader.readexactly(5) == b"still"
            assert (await new.call("fwd", "stats", {}))["accepted"] == 2

    run(main())
