"""RPC benchmark: drivebay's kernel <-> driver channel against what else exists.

Run with the project venv, from the repository root::

    .venv/bin/python scripts/bench/rpc.py [--quick] [--pin | --cross] [--json]

Side by side, in one run, same payloads (a 100-byte value, and 64 KiB):

- drivebay: ``DriverProcess.call`` of an async ``echo`` in a bench driver,
  kernel side on uvloop; the child in a driver environment built the way
  the kernel builds one for a bundle without ``lib/`` (``sandbox.envs``:
  the interpreter running this script, msgspec and uvloop added; kept in
  ``--envs-dir``); with msgspec, then with the stdlib codec
  (``DRIVEBAY_CODEC=stdlib``);
- the floor: blocking ``os.write``/``os.read`` ping-pong over two pipes;
- the asyncio floor: a bare uvloop echo Protocol in a child, called from a
  uvloop Protocol here over a socketpair; no drivebay code, no codec: what
  any design with an event loop on both ends pays at least;
- ``multiprocessing.Pipe`` + pickle: a helper doing ``send(recv())``;
- grpcio unary calls over a Unix socket (generic handlers, bytes in and out,
  a ``grpc.aio`` server).

Figures: sequential round trip (median, p99); calls/s with 64 calls in flight,
kept as a window: 64 sent, then one more per reply (``DriverProcess.start_call``
futures for drivebay, outstanding sends for multiprocessing, 64 concurrent
callers for grpc); MB/s of 64 KiB payloads with 64 in flight, the same way
(payload bytes one way; the echo sends as much back). drivebay is also
measured with 64 caller tasks each awaiting ``DriverProcess.call``, the way
the kernel's own code calls. The floor has no "in flight": its MB/s is sequential. Every
variant is warmed up before it is measured; every helper process is started
and reaped here (also on Ctrl-C). Placement: by default the scheduler places
every process; ``--pin`` puts every process of every variant on one CPU;
``--cross`` keeps this process on one CPU and every helper (the drivebay
child included) on another, so every wake-up crosses CPUs (the placement
under which the issue's targets were set); ``--json`` adds one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import multiprocessing
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _common

SMALL = os.urandom(100)
LARGE = os.urandom(64 * 1024)
IN_FLIGHT = 64
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bench" / "src"
GRPC_METHOD = "/bench.Echo/Echo"


@dataclass(frozen=True)
class Budget:
    """Seconds per measurement, and of warm-up before each; the CPU helper
    processes run on (None: wherever the scheduler puts them)."""

    seconds: float
    warmup: float
    child_cpu: int | None = None


FULL = Budget(seconds=3.0, warmup=1.0)
QUICK = Budget(seconds=0.6, warmup=0.2)


@dataclass(frozen=True)
class Figures:
    """One variant's results."""

    rtt_median_us: float
    rtt_p99_us: float
    calls_per_s: float | None  # SMALL payloads, a window of IN_FLIGHT
    mb_per_s_64k: float
    task_calls_per_s: float | None = None  # SMALL payloads, IN_FLIGHT caller tasks


def _latency(call: Callable[[], Any], budget: Budget) -> tuple[float, float]:
    _common.sample_latency(call, budget.warmup)
    return _common.latency_us(_common.sample_latency(call, budget.seconds))


async def _latency_async(call: Callable[[], Awaitable[Any]], budget: Budget) -> tuple[float, float]:
    await _common.sample_latency_async(call, budget.warmup)
    return _common.latency_us(await _common.sample_latency_async(call, budget.seconds))


async def _rate_async(call: Callable[[], Awaitable[Any]], budget: Budget) -> float:
    await _common.concurrent_rate(call, IN_FLIGHT, budget.warmup)
    return await _common.concurrent_rate(call, IN_FLIGHT, budget.seconds)


# -- the floor: raw pipes ------------------------------------------------------------


def _serve_floor(request_fd: str, reply_fd: str, control_fd: str) -> None:
    read_fd, write_fd = int(request_fd), int(reply_fd)
    _common.signal_ready(int(control_fd))
    while chunk := os.read(read_fd, 1 << 16):
        os.write(write_fd, chunk)


def _read_exact(fd: int, size: int) -> bytes:
    data = os.read(fd, size)
    while len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            raise EOFError("the floor's echo process went away")
        data += more
    return data


def bench_floor(budget: Budget) -> Figures:
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    with contextlib.ExitStack() as stack:
        for fd in (request_w, reply_r):
            stack.callback(os.close, fd)
        argv = [sys.executable, __file__, "--serve", "floor", str(request_r), str(reply_w)]
        try:
            stack.enter_context(
                _common.child_process(argv, (request_r, reply_w), cpu=budget.child_cpu)
            )
        finally:
            os.close(request_r)  # the child's ends: it holds its own copies now
            os.close(reply_w)

        def ping(payload: bytes) -> None:
            os.write(request_w, payload)
            _read_exact(reply_r, len(payload))

        median, p99 = _latency(functools.partial(ping, SMALL), budget)
        large = functools.partial(ping, LARGE)
        _common.call_rate(large, budget.warmup)
        mb_per_s = _common.call_rate(large, budget.seconds) * len(LARGE) / 1e6
        return Figures(median, p99, None, mb_per_s)


# -- multiprocessing.Pipe + pickle ---------------------------------------------------


def _serve_mp(channel_fd: str, control_fd: str) -> None:
    conn = multiprocessing.connection.Connection(int(channel_fd))
    _common.signal_ready(int(control_fd))
    with contextlib.suppress(EOFError):
        while True:
            conn.send(conn.recv())


def _mp_window(conn: multiprocessing.connection.Connection, payload: bytes, count: int) -> float:
    """Send IN_FLIGHT, then one more per reply; seconds for ``count`` calls."""
    start = time.perf_counter()
    primed = min(IN_FLIGHT, count)
    for _ in range(primed):
        conn.send(payload)
    for _ in range(count - primed):
        conn.recv()
        conn.send(payload)
    for _ in range(primed):
        conn.recv()
    return time.perf_counter() - start


def _mp_window_threaded(
    conn: multiprocessing.connection.Connection, payload: bytes, count: int
) -> float:
    """``_mp_window`` with the sends in a thread: IN_FLIGHT large payloads do
    not fit in the socket buffers, and a single thread blocked in ``send``
    while the echo blocks sending back would deadlock."""
    slots = threading.Semaphore(IN_FLIGHT)

    def send_all() -> None:
        for _ in range(count):
            slots.acquire()
            conn.send(payload)

    start = time.perf_counter()
    # A daemon: if receiving fails, the sender dies with the closed socket.
    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    for _ in range(count):
        conn.recv()
        slots.release()
    sender.join()
    return time.perf_counter() - start


def bench_mp(budget: Budget) -> Figures:
    ours, theirs = multiprocessing.Pipe()
    with contextlib.closing(ours), contextlib.closing(theirs):
        argv = [sys.executable, __file__, "--serve", "mp", str(theirs.fileno())]
        with _common.child_process(argv, (theirs.fileno(),), cpu=budget.child_cpu):
            theirs.close()

            def call() -> None:
                ours.send(SMALL)
                ours.recv()

            median, p99 = _latency(call, budget)
            small = functools.partial(_mp_window, ours, SMALL)
            calls_per_s = _common.calibrated_rate(small, budget.seconds, budget.warmup)
            large = functools.partial(_mp_window_threaded, ours, LARGE)
            large_rate = _common.calibrated_rate(large, budget.seconds, budget.warmup)
            return Figures(median, p99, calls_per_s, large_rate * len(LARGE) / 1e6)


# -- the asyncio floor: a bare uvloop echo --------------------------------------------


def _serve_uvloop_echo(sock_fd: str, control_fd: str) -> None:
    import uvloop

    uvloop.run(_uvloop_echo(int(sock_fd), int(control_fd)))


class _Echo(asyncio.Protocol):
    def __init__(self, closed: asyncio.Future[None]) -> None:
        self._closed = closed
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


async def _uvloop_echo(sock_fd: int, control_fd: int) -> None:
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    await loop.connect_accepted_socket(lambda: _Echo(closed), socket.socket(fileno=sock_fd))
    _common.signal_ready(control_fd)
    await closed  # EOF: the parent is done


class _EchoCaller(asyncio.Protocol):
    """Sends a payload, waits until as many bytes came back."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._missing = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._missing -= len(data)
        if self._missing <= 0 and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(EOFError("the uvloop echo process went away"))

    async def ping(self, payload: bytes) -> None:
        assert self.transport is not None
        self._missing = len(payload)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        await self._waiter


async def _bench_uvloop_echo(budget: Budget, sock: socket.socket) -> Figures:
    _, caller = await asyncio.get_running_loop().create_connection(_EchoCaller, sock=sock)
    try:
        median, p99 = await _latency_async(functools.partial(caller.ping, SMALL), budget)
        large = functools.partial(caller.ping, LARGE)
        await _common.sample_latency_async(large, budget.warmup)
        took = await _common.sample_latency_async(large, budget.seconds)
        mb_per_s = len(took) * len(LARGE) / (sum(took) / 1e9) / 1e6
    finally:
        assert caller.transport is not None
        caller.transport.close()
    return Figures(median, p99, None, mb_per_s)


def bench_uvloop_echo(budget: Budget) -> Figures:
    import uvloop

    ours, theirs = socket.socketpair()
    with ours, theirs:
        argv = [sys.executable, __file__, "--serve", "uvloop", str(theirs.fileno())]
        with _common.child_process(argv, (theirs.fileno(),), cpu=budget.child_cpu):
            theirs.close()
            return uvloop.run(_bench_uvloop_echo(budget, ours))


# -- grpcio over a Unix socket -------------------------------------------------------


def _serve_grpc(address: str, control_fd: str) -> None:
    asyncio.run(_grpc_server(address, int(control_fd)))


async def _grpc_server(address: str, control_fd: int) -> None:
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)  # no serializers: bytes as they are
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    server.add_insecure_port(address)
    await server.start()
    _common.signal_ready(control_fd)
    with socket.socket(fileno=control_fd) as lifeline:
        lifeline.setblocking(False)
        await asyncio.get_running_loop().sock_recv(lifeline, 1)  # EOF: the parent is done
    await server.stop(grace=None)


def bench_grpc(budget: Budget, workdir: Path) -> Figures:
    import grpc

    address = f"unix:{workdir / 'grpc.sock'}"
    argv = [sys.executable, __file__, "--serve", "grpc", address]
    with _common.child_process(argv, cpu=budget.child_cpu):
        with grpc.insecure_channel(address) as channel:
            echo = channel.unary_unary(GRPC_METHOD)
            median, p99 = _latency(functools.partial(echo, SMALL), budget)
        calls_per_s, mb_per_s = asyncio.run(_grpc_pipelined(address, budget))
    return Figures(median, p99, calls_per_s, mb_per_s)


async def _grpc_pipelined(address: str, budget: Budget) -> tuple[float, float]:
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        echo = channel.unary_unary(GRPC_METHOD)
        calls_per_s = await _rate_async(functools.partial(echo, SMALL), budget)
        large_rate = await _rate_async(functools.partial(echo, LARGE), budget)
    return calls_per_s, large_rate * len(LARGE) / 1e6


# -- drivebay ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _driver(
    codec: str, workdir: Path, envs_dir: Path, python: Path | None, cpu: int | None
) -> AsyncIterator[Any]:
    from drivebay.kernel.config import TimeoutSettings
    from drivebay.kernel.drivers.process import DriverProcess
    from drivebay.protocol.versions import PROTOCOL_MAX
    from drivebay.sandbox.envs import EnvRequest, ensure_env
    from drivebay.sandbox.runtime_dir import ensure_runtime_dir
    from drivebay.sandbox.spawn import SpawnSpec

    request = EnvRequest(python or Path(sys.executable), (), {}, None, PROTOCOL_MAX)
    env = await ensure_env(request, envs_dir)
    spec = SpawnSpec(
        python=env.python,
        runtime_dir=ensure_runtime_dir(workdir / "state"),
        entrypoint="benchdriver:Bench",
        driver="bench",
        version="1.0.0",
        cwd=workdir,
        src=FIXTURE,
        extra_env={"DRIVEBAY_CODEC": "stdlib"} if codec == "stdlib" else {},
    )
    proc = DriverProcess(spec, TimeoutSettings(start_s=10))
    with _common.spawning_on(cpu):
        await proc.start()
    try:
        if not proc.hello_codec.startswith(codec) or proc.hello_loop != "uvloop":
            got = f"{proc.hello_codec!r} on {proc.hello_loop!r}"
            raise RuntimeError(f"wanted a {codec} child on uvloop, got {got}")
        await proc.attach("r", {})
        yield proc
    finally:
        await proc.stop()


async def bench_drivebay(
    codec: str, budget: Budget, workdir: Path, envs_dir: Path, python: Path | None = None
) -> Figures:
    async with _driver(codec, workdir, envs_dir, python, budget.child_cpu) as proc:
        small = functools.partial(proc.call, "r", "echo", {"value": SMALL})
        median, p99 = await _latency_async(small, budget)
        calls_per_s = await _window_rate(proc, SMALL, budget)
        mb_per_s = await _window_rate(proc, LARGE, budget) * len(LARGE) / 1e6
        task_calls_per_s = await _rate_async(small, budget)
    return Figures(median, p99, calls_per_s, mb_per_s, task_calls_per_s)


async def _window_rate(proc: Any, payload: bytes, budget: Budget) -> float:
    await _window(proc, payload, budget.warmup)
    return await _window(proc, payload, budget.seconds)


async def _window(proc: Any, payload: bytes, seconds: float) -> float:
    """Calls/s keeping IN_FLIGHT ``start_call``s outstanding for ``seconds``:
    one more sent from each reply's callback (the calls still in flight at
    the end are waited for and counted)."""
    clock = time.perf_counter
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    args = {"value": payload}
    count = outstanding = 0
    end = clock() + seconds

    def send() -> None:
        nonlocal outstanding
        _, reply = proc.start_call("r", "echo", args)
        outstanding += 1
        reply.add_done_callback(replied)

    def replied(reply: asyncio.Future[Any]) -> None:
        nonlocal count, outstanding
        outstanding -= 1
        try:
            reply.result()
        except BaseException as exc:
            if not finished.done():
                finished.set_exception(exc)
            return
        count += 1
        if clock() < end:
            send()
        elif outstanding == 0 and not finished.done():
            finished.set_result(None)

    start = clock()
    for _ in range(IN_FLIGHT):
        send()
    await asyncio.wait_for(finished, seconds + 60)
    return count / (clock() - start)


async def _bench_drivebay_all(
    budget: Budget, workdir: Path, envs_dir: Path, child_python: Path | None
) -> dict[str, Figures]:
    results = {}
    for codec, key in (("msgspec", "drivebay"), ("stdlib", "stdlib")):
        _common.progress(f"rpc: drivebay, {codec} child ...")
        results[key] = await bench_drivebay(codec, budget, workdir, envs_dir)
    if child_python is not None:
        _common.progress(f"rpc: drivebay, msgspec child on {child_python} ...")
        results["child"] = await bench_drivebay("msgspec", budget, workdir, envs_dir, child_python)
    return results


# -- report --------------------------------------------------------------------------

COLUMNS = {
    "drivebay": "drivebay",
    "stdlib": "drivebay stdlib",
    "child": "drivebay --child-python",
    "floor": "raw pipe",
    "uvloop": "uvloop echo",
    "mp": "mp.Pipe+pickle",
    "grpc": "grpcio unix",
}
PEERS = ("floor", "uvloop", "mp", "grpc")


def _rtt_vs_floor(ours: Figures, results: dict[str, Figures]) -> float:
    return ours.rtt_median_us / results["floor"].rtt_median_us


def _calls_vs_mp(ours: Figures, results: dict[str, Figures]) -> float:
    return (ours.calls_per_s or 0) / (results["mp"].calls_per_s or 1)


def _task_calls_vs_mp(ours: Figures, results: dict[str, Figures]) -> float:
    return (ours.task_calls_per_s or 0) / (results["mp"].calls_per_s or 1)


def _rtt_vs_grpc(ours: Figures, results: dict[str, Figures]) -> float:
    return results["grpc"].rtt_median_us / ours.rtt_median_us


def _calls_vs_grpc(ours: Figures, results: dict[str, Figures]) -> float:
    return (ours.calls_per_s or 0) / (results["grpc"].calls_per_s or 1)


# The targets, each as (label, measure, comparison, goal).
TARGETS = (
    ("RTT median / raw pipe RTT", _rtt_vs_floor, "<=", 2.0),
    ("calls/s / mp+pickle calls/s", _calls_vs_mp, ">=", 1.3),
    ("... with 64 caller tasks", _task_calls_vs_mp, ">=", 1.3),
    ("grpc RTT / RTT median", _rtt_vs_grpc, ">=", 4.0),
    ("calls/s / grpc calls/s", _calls_vs_grpc, ">=", 20.0),
)


def _speedups(ours: Figures, peer: Figures) -> list[float | None]:
    """How many times better ours is, per figure (> 1: ours is better)."""
    calls = None
    if ours.calls_per_s and peer.calls_per_s:
        calls = ours.calls_per_s / peer.calls_per_s
    return [
        peer.rtt_median_us / ours.rtt_median_us,
        peer.rtt_p99_us / ours.rtt_p99_us,
        calls,
        ours.mb_per_s_64k / peer.mb_per_s_64k,
    ]


def _met(value: float, comparison: str, goal: float) -> bool:
    return value <= goal if comparison == "<=" else value >= goal


def report(results: dict[str, Figures]) -> str:
    """The figures, drivebay against each peer, and the issue's targets."""
    floor = results["uvloop"].rtt_median_us / results["floor"].rtt_median_us
    note = (
        f"The asyncio floor: a bare uvloop echo (no drivebay code) takes {floor:.2f}x "
        "the raw pipe's RTT median."
    )
    tables = [_figures_table(results), _speedups_table(results), _targets_table(results)]
    return "\n\n".join([*tables, note])


def _figures_table(results: dict[str, Figures]) -> str:
    labels = [
        "RTT median µs",
        "RTT p99 µs",
        "calls/s, 64 in flight",
        "MB/s 64 KiB, 64 in flight*",
        "calls/s, 64 caller tasks",
    ]
    keys = [key for key in COLUMNS if key in results]
    columns = [list(asdict(results[key]).values()) for key in keys]
    rows = [[label, *(_common.number(col[i]) for col in columns)] for i, label in enumerate(labels)]
    table = _common.format_table(["", *(COLUMNS[key] for key in keys)], rows)
    return table + "\n* raw pipe, uvloop echo: sequential ping-pong"


def _speedups_table(results: dict[str, Figures]) -> str:
    rows = []
    for key in ("drivebay", "stdlib", "child"):
        if key not in results:
            continue
        for peer in PEERS:
            cells = _speedups(results[key], results[peer])
            rows.append([f"{COLUMNS[key]} vs {COLUMNS[peer]}", *(_ratio(c) for c in cells)])
    headers = ["times better", "RTT median", "RTT p99", "calls/s", "MB/s 64 KiB"]
    return _common.format_table(headers, rows)


def _targets_table(results: dict[str, Figures]) -> str:
    rows = []
    for label, measure, comparison, goal in TARGETS:
        cells = [label, f"{comparison} {goal:g}x"]
        for key in ("drivebay", "stdlib"):
            value = measure(results[key], results)
            cells += [_ratio(value), "met" if _met(value, comparison, goal) else "NOT met"]
        rows.append(cells)
    return _common.format_table(["target", "goal", "drivebay", "", "drivebay stdlib", ""], rows)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def as_json(results: dict[str, Figures], quick: bool, placement: Placement) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    prefixes = {
        "drivebay": "",
        "stdlib": "stdlib_",
        "floor": "floor_",
        "uvloop": "uvloop_echo_",
        "child": "child_python_",
        "mp": "mp_pickle_",
    }
    for key, figures in results.items():
        prefix = prefixes.get(key, f"{key}_")
        for name, value in asdict(figures).items():
            name = {
                "calls_per_s": "pipelined_calls_per_s",
                "task_calls_per_s": "pipelined_tasks_calls_per_s",
            }.get(name, name)
            if value is not None:
                flat[prefix + name] = round(value, 2)
    for label, measure, comparison, goal in TARGETS:
        for key, prefix in (("drivebay", ""), ("stdlib", "stdlib_")):
            value = measure(results[key], results)
            flat.setdefault(f"{prefix}targets", {})[label] = {
                "value": round(value, 3),
                "goal": f"{comparison} {goal:g}",
                "met": _met(value, comparison, goal),
            }
    flat.update(
        mode="quick" if quick else "full",
        placement=placement.name,
        pinned_cpu=placement.caller_cpu if placement.name == "pinned" else None,
        in_flight=IN_FLIGHT,
    )
    flat["machine"] = _common.machine()
    return flat


# -- main ----------------------------------------------------------------------------


def run_all(budget: Budget, envs_dir: Path, child_python: Path | None) -> dict[str, Figures]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="drivebay-bench-") as tmp:
        workdir = Path(tmp)
        results: dict[str, Figures] = {}
        _common.progress("rpc: raw pipe floor ...")
        results["floor"] = bench_floor(budget)
        _common.progress("rpc: bare uvloop echo ...")
        results["uvloop"] = bench_uvloop_echo(budget)
        _common.progress("rpc: multiprocessing.Pipe + pickle ...")
        results["mp"] = bench_mp(budget)
        _common.progress("rpc: grpcio over a Unix socket ...")
        results["grpc"] = bench_grpc(budget, workdir)
        results.update(uvloop.run(_bench_drivebay_all(budget, workdir, envs_dir, child_python)))
        return results


@dataclass(frozen=True)
class Placement:
    """Where the processes run: ``unpinned``, ``pinned`` (all on one CPU) or
    ``cross`` (this process on one CPU, every helper on another)."""

    name: str
    caller_cpu: int | None = None
    child_cpu: int | None = None

    @classmethod
    def choose(cls, pin: bool, cross: bool) -> Placement:
        if pin:
            return cls("pinned", _common.pin_to_one_cpu())
        if cross:
            return cls("cross", *_common.split_cpus())
        return cls("unpinned")

    def __str__(self) -> str:
        if self.name == "pinned":
            return f"pinned to CPU {self.caller_cpu}"
        if self.name == "cross":
            return f"this process on CPU {self.caller_cpu}, helpers on CPU {self.child_cpu}"
        return "unpinned"


def _footer(info: dict[str, Any], placement: Placement, quick: bool, took: float) -> str:
    return (
        f"\n{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_1m']}, {placement}, {'quick' if quick else 'full'} run, {took:.1f} s"
    )


def serve(kind: str, args: list[str]) -> None:
    """Entry point of the helper processes (``--serve KIND ARGS... CONTROL_FD``)."""
    servers: dict[str, Callable[..., None]] = {
        "floor": _serve_floor,
        "uvloop": _serve_uvloop_echo,
        "mp": _serve_mp,
        "grpc": _serve_grpc,
    }
    servers[kind](*args)


def main(argv: list[str] | None = None) -> None:
    parser = _common.bench_parser(__doc__.split("\n\n")[0], "short runs (under 30 s in all)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--pin", action="store_true", help="pin every process to one CPU")
    where.add_argument(
        "--cross",
        action="store_true",
        help="this process on one CPU, every helper process on another",
    )
    parser.add_argument(
        "--child-python",
        type=Path,
        help="also measure a msgspec child on this interpreter (e.g. a Python 3.12)",
    )
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        serve(options.serve[0], options.serve[1:])
        return
    placement = Placement.choose(options.pin, options.cross)
    started = time.monotonic()
    options.envs_dir.mkdir(parents=True, exist_ok=True)
    budget = dataclasses.replace(QUICK if options.quick else FULL, child_cpu=placement.child_cpu)
    results = run_all(budget, options.envs_dir, options.child_python)
    print(report(results))
    print(_footer(_common.machine(), placement, options.quick, time.monotonic() - started))
    child = _interpreter(options.child_python) if options.child_python else None
    if child:
        print(f"--child-python: {child}")
    if options.json:
        flat = as_json(results, options.quick, placement)
        _common.print_json_last({**flat, "child_python": child})


def _interpreter(python: Path) -> str:
    """``python``'s path and version, as the report names it."""
    probe = [str(python), "-c", "import platform; print(platform.python_version())"]
    version = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    return f"{python} (Python {version})"


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # helpers are reaped by then; spare the traceback
        sys.exit(130)
