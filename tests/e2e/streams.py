"""Byte streams that check themselves, echo servers, and versions of the tcp-forward bundle.

A ``Stream`` is one client sending a known sequence through a port and
checking that each byte comes back, in order, from an echo server; every
64 KiB block of the sequence starts with its number, so a lost, repeated or
reordered byte shows at once. ``Probe`` connects again and again and
round-trips a few bytes. ``forward_bundle`` copies ``drivers/tcp-forward``
as another version, optionally with a takeover that fails (a test switch).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from tests.drivers.bundles import bundle_copy

BLOCK = 64 * 1024
_BASE = os.urandom(BLOCK)
CHUNK = 8 * 1024
WINDOW = 32 * 1024  # bytes a stream may have sent and not yet had back
PACE_S = 0.005  # between two chunks: a rate (1.6 MB/s a stream), not a wait for anything;
# unpaced, 20 streams take every CPU of a small machine from the upgrades under test

FAILING_TAKEOVER = '''"""Test only: tcp-forward whose takeover {fail_at} in its process fails.

Each takeover that succeeds, and each handoff (a hand-back: this version only
ever hands back), is logged as a warning, which reaches the daemon's log."""

import logging

from tcp_forward import TcpForward

log = logging.getLogger("failing_takeover")


class FailingTakeover(TcpForward):
    takeovers = 0

    async def takeover(self, state, from_version):
        FailingTakeover.takeovers += 1
        if FailingTakeover.takeovers == {fail_at}:
            raise RuntimeError("test switch: takeover {fail_at} fails")
        await super().takeover(state, from_version)
        log.warning("test switch: took over %s", self.resource_id)

    async def handoff(self):
        log.warning("test switch: handing back %s", self.resource_id)
        return await super().handoff()
'''


def forward_bundle(staging: Path, version: str, fail_takeover_at: int | None = None) -> Path:
    """``drivers/tcp-forward`` as ``version`` in ``staging``; with ``fail_takeover_at``,
    the ``fail_takeover_at``-th takeover of its process raises."""
    bundle = bundle_copy(staging, "tcp-forward", version)
    if fail_takeover_at is not None:
        manifest = bundle / "driver.yaml"
        entrypoint = "entrypoint: tcp_forward:TcpForward\n"
        assert entrypoint in manifest.read_text()
        failing = "entrypoint: failing_takeover:FailingTakeover\n"
        manifest.write_text(manifest.read_text().replace(entrypoint, failing))
        source = FAILING_TAKEOVER.format(fail_at=fail_takeover_at)
        (bundle / "src" / "failing_takeover.py").write_text(source)
    return bundle


def expected(offset: int, size: int) -> bytes:
    """``size`` bytes of the sequence from ``offset``."""
    out = bytearray()
    while len(out) < size:
        block, within = divmod(offset + len(out), BLOCK)
        data = block.to_bytes(8, "big") + _BASE[8:]
        out += data[within : within + size - len(out)]
    return bytes(out)


class Stream:
    """One client streaming the sequence through ``port`` until ``stop``, then EOF."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.received = 0
        self.errors: list[str] = []
        self._progress = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            self.errors.append(f"port {self.port}: cannot connect: {exc!r}")
            return
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send(writer, stop))
                group.create_task(self._receive(reader))
        except* OSError as group_error:
            self.errors += [f"port {self.port}: {exc!r}" for exc in group_error.exceptions]
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
        while not stop.is_set():
            while self.sent - self.received >= WINDOW:
                self._progress.clear()
                await self._progress.wait()
            writer.write(expected(self.sent, CHUNK))
            self.sent += CHUNK
            await writer.drain()
            await asyncio.sleep(PACE_S)
        writer.write_eof()

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            if data != expected(self.received, len(data)):
                raise OSError(f"bytes {self.received}.. came back wrong")
            self.received += len(data)
            self._progress.set()
        self._progress.set()


class Probe:
    """Connects to each port in turn until ``stop``, a round trip of a few bytes each."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.done: list[tuple[float, float]] = []  # (started, finished), loop time
        self.errors: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        turn = 0
        while not stop.is_set():
            port = self.ports[turn % len(self.ports)]
            turn += 1
            started = loop.time()
            try:
                async with asyncio.timeout(10):
                    await _round_trip(port)
            except (OSError, TimeoutError) as exc:
                self.errors.append(f"probe of port {port}: {exc!r}")
                continue
            self.done.append((started, loop.time()))

    def within(self, start: float, end: float) -> int:
        """Probes that connected and came back while ``start``..``end``."""
        return sum(start <= began and finished <= end for began, finished in self.done)


async def _round_trip(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"probe")
        if await reader.readexactly(5) != b"probe":
            raise OSError("the probe came back wrong")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def echo_servers(count: int) -> AsyncIterator[list[int]]:
    """``count`` echo servers on 127.0.0.1 that pass a half-close on; their ports."""
    servers = [await asyncio.start_server(_echo, "127.0.0.1", 0) for _ in range(count)]
    try:
        yield [server.sockets[0].getsockname()[1] for server in servers]
    finally:
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
