"""The floor under ``scale.py``'s calls: drivebay's shape with nothing of drivebay in it.

A relay process stands where drivebayd does, echo processes where the
drivers do: ``CONNECTIONS`` framed connections from the caller (this
process) to the relay, one socketpair from the relay to each echo process.
The relay decodes each request, gives it an id of its own, sends it to the
echo process its resource lives on (a dict lookup) and maps the reply back.
The frames, codec, coalesced writes and echo helper are ``hop.py``'s
(uvloop Protocols, 4-byte length + msgspec MessagePack). Resources are
placed on the echo processes as ``scale.py`` places them on drivers, so the
same load runs against 4 echo processes and against 100, and the cost of
spreading it shows without drivebay's actors, validation or deadlines.

Run as ``_scale_floor.py TABLE UP_FDS DOWN_FDS CONTROL_FD`` it is the relay
(TABLE: a JSON file {resource: echo index}; fds comma-separated).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common
import hop
import uvloop

HOP = str(Path(hop.__file__).resolve())


async def _connect(sock: socket.socket, protocol: hop.Framed) -> hop.Framed:
    await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)
    return protocol


async def _relay(
    table: dict[str, int], up_fds: list[int], down_fds: list[int], control_fd: int
) -> None:
    callers: dict[int, tuple[int, int]] = {}  # our id -> (connection, its id)
    ids = itertools.count(1)
    down: list[hop.Framed] = []
    up: list[hop.Framed] = []

    def forwarder(connection: int) -> Any:
        def forward(request: hop.Request) -> None:
            own = next(ids)
            callers[own] = (connection, request.id)
            echo = down[table[request.resource]]
            echo.send(hop.Request(own, request.resource, request.op, request.args))

        return forward

    def back(reply: hop.Reply) -> None:
        connection, their_id = callers.pop(reply.id)
        up[connection].send(hop.Reply(their_id, reply.value))

    for fd in down_fds:
        down.append(await _connect(socket.socket(fileno=fd), hop.Framed(hop.Reply, back)))
    for n, fd in enumerate(up_fds):
        up.append(await _connect(socket.socket(fileno=fd), hop.Framed(hop.Request, forwarder(n))))
    _common.signal_ready(control_fd)
    await asyncio.wait([asyncio.ensure_future(channel.lost) for channel in up])
    for channel in down:
        channel.close()


class Client:
    """Calls over the caller's connections to the relay, each awaited as a future
    (as ``AsyncClient`` does), each resource always on the same connection."""

    def __init__(self, connections: int) -> None:
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._channels = [hop.Framed(hop.Reply, self._replied) for _ in range(connections)]

    async def open(self, socks: list[socket.socket]) -> None:
        for channel, sock in zip(self._channels, socks, strict=True):
            await _connect(sock, channel)

    def _replied(self, reply: hop.Reply) -> None:
        self._waiting.pop(reply.id).set_result(reply.value)

    async def call(self, connection: int, resource: str, args: dict[str, Any]) -> Any:
        own = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[own] = future
        self._channels[connection].send(hop.Request(own, resource, "record", args))
        return await future

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@contextlib.contextmanager
def floor(
    table: dict[str, int], echoes: int, connections: int, workdir: Path, batch: bool = False
) -> Iterator[tuple[list[socket.socket], int, list[int]]]:
    """The relay and ``echoes`` echo processes (SCHED_BATCH with ``batch``),
    started and always reaped: (this end of each connection to the relay, the
    relay's pid, the echo pids)."""
    workdir.mkdir(parents=True, exist_ok=True)
    table_path = workdir / "floor-table.json"
    table_path.write_text(json.dumps(table))
    with contextlib.ExitStack() as stack:
        echo_pids, down_ends = [], []
        for _ in range(echoes):
            relay_end, echo_end = socket.socketpair()
            stack.callback(relay_end.close)
            with echo_end:
                argv = [sys.executable, HOP, "--serve", "echo", str(echo_end.fileno())]
                echo = stack.enter_context(_common.child_process(argv, (echo_end.fileno(),)))
            if batch:
                os.sched_setscheduler(echo.pid, os.SCHED_BATCH, os.sched_param(0))
            echo_pids.append(echo.pid)
            down_ends.append(relay_end)
        pairs = [socket.socketpair() for _ in range(connections)]
        ours = [pair[0] for pair in pairs]
        for sock in ours:
            stack.callback(sock.close)
        with contextlib.ExitStack() as theirs:
            for pair in pairs:
                theirs.callback(pair[1].close)
            up_fds = [pair[1].fileno() for pair in pairs]
            down_fds = [sock.fileno() for sock in down_ends]
            argv = [
                sys.executable,
                __file__,
                str(table_path),
                ",".join(map(str, up_fds)),
                ",".join(map(str, down_fds)),
            ]
            relay = stack.enter_context(_common.child_process(argv, (*up_fds, *down_fds)))
        for sock in down_ends:
            sock.close()  # the relay holds them now
        yield ours, relay.pid, echo_pids


def main() -> None:
    table_path, up, down = sys.argv[1:4]
    control = int(sys.argv[4])
    table: dict[str, int] = json.loads(Path(table_path).read_text())
    uvloop.run(
        _relay(
            table, [int(fd) for fd in up.split(",")], [int(fd) for fd in down.split(",")], control
        )
    )


if __name__ == "__main__":
    main()
