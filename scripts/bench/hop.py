"""What one more Python process in a call's path costs: the floor under issue 5's
drivebayd figure.

Run with the project venv, from the repository root::

    .venv/bin/python scripts/bench/hop.py [--quick] [--json]

drivebayd sits between a program and a driver: every call crosses two
channels, and the daemon reads, decodes, encodes and writes it twice. This
measures what that shape costs with nothing of drivebay in it:

- *direct*: a caller and an echo process over a socketpair;
- *relayed*: the same caller and echo with a relay process between them,
  which decodes each request, gives it an id of its own, sends it on,
  and maps the reply back (no actors, validation, deadlines or ordering).

All three are uvloop Protocols with 4-byte length-prefixed msgspec frames
(``array_like`` Structs, one reusable encoder and decoder each), writes
coalesced in chunks of 8 frames as drivebay's ``Outbox`` does, and 300
calls in flight kept as a window (a new call from each reply's callback, no
tasks). The two variants run in alternating
rounds; calls/s is the median, CPU per call is read from ``/proc`` for each
process. The ratio direct/relayed is the least an extra Python hop costs on
this machine; ``docs/benchmarks.md`` sets it beside drivebayd's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import _common
import msgspec
import uvloop

IN_FLIGHT = 300
CHUNK_FRAMES = 8  # as drivebay's Outbox: a burst goes out in chunks
RESOURCES = 100
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
HEADER = struct.Struct(">I")
ARGS = {"seq": 1, "note": "x" * 60}  # about the size of the ledger driver's ``record``


class Request(msgspec.Struct, array_like=True, frozen=True):
    id: int
    resource: str
    op: str
    args: dict[str, Any]


class Reply(msgspec.Struct, array_like=True, frozen=True):
    id: int
    value: Any


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float
    warmup: float


FULL = Plan(rounds=3, seconds=3.0, warmup=1.0)
QUICK = Plan(rounds=1, seconds=0.6, warmup=0.3)


class Framed(asyncio.Protocol):
    """A framed msgspec connection: decoded messages to ``on_message``."""

    def __init__(self, incoming: type[Any], on_message: Callable[[Any], None]) -> None:
        self._decode = msgspec.msgpack.Decoder(incoming).decode
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray()
        self._on_message = on_message
        self._out: list[bytearray] = []
        self._flush_pending = False
        self._transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        view = memoryview(buffer)
        end, pos = len(buffer), 0
        while end - pos >= 4:
            (size,) = HEADER.unpack_from(view, pos)
            if end - pos - 4 < size:
                break
            self._on_message(self._decode(view[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        view.release()
        del buffer[:pos]

    def send(self, message: Any) -> None:
        out = bytearray(4)
        self._encoder.encode_into(message, out, 4)
        HEADER.pack_into(out, 0, len(out) - 4)
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._end_pass)
        self._out.append(out)
        if len(self._out) >= CHUNK_FRAMES:  # the peer starts on it while we go on
            self._flush()

    def _end_pass(self) -> None:
        self._flush_pending = False
        self._flush()

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(out)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def _connect(sock: socket.socket, protocol: Framed) -> Framed:
    await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)
    return protocol


# -- the helper processes ------------------------------------------------------------


async def _echo(fd: int, control_fd: int) -> None:
    def answer(request: Request) -> None:
        channel.send(Reply(request.id, request.args))

    channel = await _connect(socket.socket(fileno=fd), Framed(Request, answer))
    _common.signal_ready(control_fd)
    await channel.lost


async def _relay(up_fd: int, down_fd: int, control_fd: int) -> None:
    callers: dict[int, int] = {}
    ids = iter(range(1, sys.maxsize))

    def forward(request: Request) -> None:
        own = next(ids)
        callers[own] = request.id
        down.send(Request(own, request.resource, request.op, request.args))

    def back(reply: Reply) -> None:
        up.send(Reply(callers.pop(reply.id), reply.value))

    down = await _connect(socket.socket(fileno=down_fd), Framed(Reply, back))
    up = await _connect(socket.socket(fileno=up_fd), Framed(Request, forward))
    _common.signal_ready(control_fd)
    await up.lost
    down.close()


def serve(kind: str, fds: list[str]) -> None:
    numbers = [int(fd) for fd in fds]
    uvloop.run(_echo(*numbers) if kind == "echo" else _relay(*numbers))


# -- the caller ----------------------------------------------------------------------


@contextmanager
def _path(relayed: bool) -> Iterator[tuple[socket.socket, list[int]]]:
    """This end of a path to an echo process (through a relay when
    ``relayed``), and the helpers' pids (echo first)."""
    with ExitStack() as stack:
        ours, theirs = socket.socketpair()
        stack.callback(ours.close)
        pids = []
        with theirs:
            if relayed:
                down, echo_end = socket.socketpair()
                with down, echo_end:
                    echo = [sys.executable, __file__, "--serve", "echo", str(echo_end.fileno())]
                    pids.append(
                        stack.enter_context(_common.child_process(echo, (echo_end.fileno(),))).pid
                    )
                    argv = [
                        sys.executable,
                        __file__,
                        "--serve",
                        "relay",
                        str(theirs.fileno()),
                        str(down.fileno()),
                    ]
                    fds = (theirs.fileno(), down.fileno())
                    pids.append(stack.enter_context(_common.child_process(argv, fds)).pid)
            else:
                echo = [sys.executable, __file__, "--serve", "echo", str(theirs.fileno())]
                pids.append(
                    stack.enter_context(_common.child_process(echo, (theirs.fileno(),))).pid
                )
        yield ours, pids


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


@dataclass
class Sample:
    calls_per_s: float
    cpu_us: list[float]  # per call: caller, then the helpers (echo, relay)


class Window:
    """IN_FLIGHT calls outstanding; each reply sends the next one."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._channel = Framed(Reply, self._replied)
        self._next_id = 0
        self._waiting: set[int] = set()
        self.answered = 0
        self._running = True
        self._drained = self._loop.create_future()

    async def start(self, sock: socket.socket) -> None:
        await _connect(sock, self._channel)
        for _ in range(IN_FLIGHT):
            self._send()

    def _send(self) -> None:
        self._next_id += 1
        self._waiting.add(self._next_id)
        self._channel.send(Request(self._next_id, f"r{self._next_id % RESOURCES}", "record", ARGS))

    def _replied(self, reply: Reply) -> None:
        self._waiting.remove(reply.id)  # a reply to no call raises: the bench is wrong
        self.answered += 1
        if self._running:
            self._send()
        elif not self._waiting and not self._drained.done():
            self._drained.set_result(None)

    async def stop(self) -> None:
        self._running = False
        if self._waiting:
            await asyncio.wait_for(self._drained, 30)
        self._channel.close()


async def _measure(sock: socket.socket, pids: list[int], plan: Plan) -> Sample:
    window = Window()
    await window.start(sock)
    await asyncio.sleep(plan.warmup)  # a warm-up, not a wait for a condition
    everyone = [os.getpid(), *pids]
    cpu_before = [_cpu_s(pid) for pid in everyone]
    answered, started = window.answered, time.monotonic()
    await asyncio.sleep(plan.seconds)
    calls = window.answered - answered
    took = time.monotonic() - started
    cpu = [
        (_cpu_s(pid) - before) / calls * 1e6
        for pid, before in zip(everyone, cpu_before, strict=True)
    ]
    await window.stop()
    return Sample(calls / took, cpu)


def run(plan: Plan) -> dict[str, Sample]:
    samples: dict[str, list[Sample]] = {"direct": [], "relayed": []}
    for round_ in range(plan.rounds):
        for name in ("direct", "relayed") if round_ % 2 == 0 else ("relayed", "direct"):
            _common.progress(f"hop: {name}, round {round_ + 1} of {plan.rounds} ...")
            with _path(name == "relayed") as (sock, pids):
                samples[name].append(uvloop.run(_measure(sock, pids, plan)))
    return {name: _median(found) for name, found in samples.items()}


def _median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.calls_per_s for s in samples),
        [statistics.median(column) for column in zip(*(s.cpu_us for s in samples), strict=True)],
    )


def report(results: dict[str, Sample]) -> str:
    direct, relayed = results["direct"], results["relayed"]
    rows = []
    for name, sample in results.items():
        cpu = [*sample.cpu_us, None][:3]  # caller, echo, relay
        rows.append(
            [
                name,
                f"{sample.calls_per_s:,.0f}",
                f"{direct.calls_per_s / sample.calls_per_s:.2f}x",
                *(_common.number(c) if c is not None else "-" for c in cpu),
            ]
        )
    table = _common.format_table(
        ["300 in flight", "calls/s", "ratio to direct", "CPU µs/call: caller", "echo", "relay"],
        rows,
    )
    ratio = direct.calls_per_s / relayed.calls_per_s
    return f"{table}\n\nOne more Python process in the path: {ratio:.2f}x the time per call."


def main(argv: list[str] | None = None) -> None:
    parser = _common.bench_parser(
        __doc__.split("\n\n")[0], "one short round (a few seconds)", envs=False
    )
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        serve(options.serve[0], options.serve[1:])
        return
    started = time.monotonic()
    results = run(QUICK if options.quick else FULL)
    print(report(results))
    info = _common.machine()
    mode = "quick" if options.quick else "full"
    print(
        f"\n{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_1m']}, {mode} run, {time.monotonic() - started:.1f} s"
    )
    if options.json:
        flat: dict[str, Any] = {
            "in_flight": IN_FLIGHT,
            "mode": "quick" if options.quick else "full",
        }
        for name, sample in results.items():
            flat[f"{name}_calls_per_s"] = round(sample.calls_per_s)
            flat[f"{name}_cpu_us_per_call"] = [round(c, 2) for c in sample.cpu_us]
        flat["relayed_ratio"] = round(
            results["direct"].calls_per_s / results["relayed"].calls_per_s, 3
        )
        flat["machine"] = info
        _common.print_json_last(flat)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # helpers are reaped by then
        sys.exit(130)
