"""Where the time of a stateful handover goes: tcp-forward, 100 resources, 1,000 connections.

Run with the project venv, from the repository root::

    .venv/bin/python scripts/bench/handover_phases.py [--quick] [--json]

Two measurements, one after the other:

1. *The driver alone*: 100 ``TcpForward`` instances in this process, 10
   relayed connections each, handed from one set of instances to another
   (each socket duplicated on the way, as the descriptor channel does): the
   time of 100 ``handoff()`` calls, of 100 ``takeover()`` calls and of 100
   ``detach()`` calls, back to back.
2. *Through the kernel*: a ``Kernel`` in this process (no control socket)
   with tcp-forward's copies as in ``upgrade.py``'s stateful case; each
   upgrade's move of the 100 resources is cut into the kernel's requests to
   the driver processes, timed from the kernel's side: ``handoff`` (old
   process: the hook, the state encoded, the descriptors sent), ``takeover``
   (descriptors sent, the new process's hook), ``handoff_end`` (the old
   instance's detach), and each resource's ``move`` (its stall: up to the
   takeover, where the actor sends the detach without waiting). The
   requests are timed by wrapping ``DriverProcess``'s methods for this run;
   the bundle is a traced copy of tcp-forward whose hooks stamp their start
   and end on the monotonic clock the three processes share, so each move is
   cut across them (sent -> hook -> back, for both sides), with each
   process's CPU time over the round. ``--moves N`` sets ``handover_moves``.

The clients send nothing during the moves: the figures are the handover's own
cost. Every connection is checked with a round trip at the end.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _common
import _stateful

RESOURCES = 100
PER_RESOURCE = 10
PHASES = ("handoff", "takeover", "handoff_end", "move")
Mark = tuple[str, float, float]  # (phase, start, end)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def connect_all(ports: list[int]) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``PER_RESOURCE`` connections to each port, each with one round trip done."""
    opened = []
    for port in ports:
        for _ in range(PER_RESOURCE):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            await reader.readexactly(1)
            opened.append((reader, writer))
    return opened


async def check_and_close(opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    """Round trips that came back, of one per connection; every connection closed."""
    good = 0
    for reader, writer in opened:
        writer.write(b"y")
        good += await reader.readexactly(1) == b"y"
        writer.close()
    return good


def carried(value: Any) -> Any:
    if isinstance(value, socket.socket):
        return socket.socket(fileno=os.dup(value.fileno()))
    if isinstance(value, dict):
        return {key: carried(item) for key, item in value.items()}
    if isinstance(value, list):
        return [carried(item) for item in value]
    return value


async def driver_alone(target: int, rounds: int) -> list[dict[str, float]]:
    sys.path.insert(0, str(_stateful.BUNDLE / "src"))
    forward = importlib.import_module("tcp_forward")
    props = {"listen_port": 0, "target_host": "127.0.0.1", "target_port": target}
    old = [forward.TcpForward(f"f{n:03}", props) for n in range(RESOURCES)]
    for instance in old:
        await instance.attach()
    opened = await connect_all([(await i.stats())["listen_port"] for i in old])
    clock, found = time.perf_counter, []
    for _ in range(rounds):
        start = clock()
        states = [await instance.handoff() for instance in old]
        handed = clock()
        states = [carried(state) for state in states]
        new = [forward.TcpForward(f"f{n:03}", props) for n in range(RESOURCES)]
        copied = clock()
        for instance, state in zip(new, states, strict=True):
            await instance.takeover(state, "1.0.0")
        taken = clock()
        for instance in old:
            await instance.detach()
        found.append(
            {
                "handoff_ms": (handed - start) * 1e3,
                "takeover_ms": (taken - copied) * 1e3,
                "detach_ms": (clock() - taken) * 1e3,
            }
        )
        old = new
    if await check_and_close(opened) != len(opened):
        raise RuntimeError("a connection did not survive the driver-only handovers")
    for instance in old:
        await instance.detach()
    return found


def timed(
    marks: list[Mark],
    phase: str,
    method: Callable[..., Awaitable[Any]],
    stamps: dict[tuple[str, str], tuple[float, float]],
    rid_at: int,
) -> Any:
    """``method`` timed into ``marks`` and, by resource (its ``rid_at``-th
    argument), into ``stamps``, on the monotonic clock the children share."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        CPU.append(time.process_time())
        try:
            return await method(*args, **kwargs)
        finally:
            CPU.append(time.process_time())
            end = time.monotonic()
            marks.append((phase, start, end))
            stamps[phase, args[rid_at]] = (start, end)

    return wrapper


CPU: list[float] = []  # this process's CPU time at each start and end of a timed request


def kernel_cpu() -> float:
    return max(CPU) - min(CPU) if CPU else 0.0


STEPS = (  # (label, from, to) over the stamps of one move, see ``per_move``
    ("handoff sent -> old's hook starts", "K.handoff<", "O.hook<"),
    ("old's handoff() hook", "O.hook<", "O.hook>"),
    ("hook end -> kernel has state + fds", "O.hook>", "K.handoff>"),
    ("kernel: state in -> takeover call", "K.handoff>", "K.takeover<"),
    ("takeover + fds sent -> new's hook starts", "K.takeover<", "N.hook<"),
    ("new's takeover() hook", "N.hook<", "N.hook>"),
    ("hook end -> kernel has the result", "N.hook>", "K.takeover>"),
    ("result -> detach sent", "K.takeover>", "K.handoff_end<"),
    ("detach (handoff_end) round trip", "K.handoff_end<", "K.handoff_end>"),
    ("the resource's stall (its move)", "K.move<", "K.move>"),
    ("handoff sent -> old instance detached", "K.handoff<", "K.handoff_end>"),
    ("upgrade start -> this move starts", "first", "K.move<"),
)


def per_move(
    stamps: dict[tuple[str, str], tuple[float, float]], hooks: dict[str, list[float]]
) -> dict[str, dict[str, float]]:
    """Median and max of each step of one move, over the resources."""
    first = min(start for start, _ in stamps.values())
    found: dict[str, list[float]] = {label: [] for label, _, _ in STEPS}
    for rid, hooked in hooks.items():
        if len(hooked) != 8 or (("move", rid) not in stamps):
            continue
        at = {"first": first, "O.hook<": hooked[0], "O.hook>": hooked[1]}
        at |= {"N.hook<": hooked[2], "N.hook>": hooked[3]}
        for phase in PHASES:
            began, ended = stamps[phase, rid]
            at[f"K.{phase}<"], at[f"K.{phase}>"] = began, ended
        for label, since, until in STEPS:
            found[label].append((at[until] - at[since]) * 1e3)
    moves: dict[str, dict[str, float]] = {
        label: {"median_ms": statistics.median(v), "max_ms": max(v)}
        for label, v in found.items()
        if v
    }
    # CPU of each process from its first hook of the round to its last
    # (the kernel's: from its first request to its last answer).
    traced = [t for t in hooks.values() if len(t) == 8]
    moves["CPU: old process (first to last handoff)"] = {
        "ms": (max(t[5] for t in traced) - min(t[4] for t in traced)) * 1e3
    }
    moves["CPU: new process (first to last takeover)"] = {
        "ms": (max(t[7] for t in traced) - min(t[6] for t in traced)) * 1e3
    }
    moves["CPU: kernel (first request to last answer)"] = {"ms": kernel_cpu() * 1e3}
    return moves


async def through_kernel(
    root: Path, target: int, upgrades: int, moves: int | None
) -> list[dict[str, Any]]:
    import msgspec

    from drivebay.kernel.config import Config
    from drivebay.kernel.drivers.process import DriverProcess
    from drivebay.kernel.kernel import Kernel
    from drivebay.kernel.resources import actor

    marks: list[Mark] = []
    stamps: dict[tuple[str, str], tuple[float, float]] = {}
    for phase in PHASES[:3]:
        method = timed(marks, phase, getattr(DriverProcess, phase), stamps, 1)
        setattr(DriverProcess, phase, method)
    # The resource's stall: the whole move, or up to the takeover where the
    # actor sends the old instance's detach without waiting for it.
    moving = "hand_state" if hasattr(actor, "hand_state") else "move_state"
    setattr(actor, moving, timed(marks, "move", getattr(actor, moving), stamps, 2))
    settings: dict[str, Any] = {
        "state_dir": str(root / "state"),
        "drivers_dir": str(root / "drivers"),
        "socket": str(root / "ctl.sock"),
        "envs_dir": str(_common.default_envs_dir()),
        "settle_s": 0.2,
    }
    if moves is not None:
        settings["handover_moves"] = moves
    open_files = _stateful.StatefulPlan().open_files
    _stateful.forward_bundle(root, "1.0.0", open_files, stateless=False, traced=True)
    kernel = Kernel(msgspec.convert(settings, Config))
    found = []

    async def until(check: Callable[[], bool]) -> None:
        """Polled: the kernel offers no event for these states."""
        async with asyncio.timeout(120):
            while True:
                if check():
                    return
                await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as group:
        group.create_task(kernel.run())
        try:
            await until(lambda: kernel.book is not None and kernel.running(_stateful.DRIVER))
            book = kernel.book
            assert book is not None
            ids = [f"f{n:03}" for n in range(RESOURCES)]
            assignments = ["listen_port=0", "target_host=127.0.0.1", f"target_port={target}"]
            await asyncio.gather(*(book.add(r, _stateful.DRIVER, None, assignments) for r in ids))
            ports = [(await book.call(r, "stats", {}, None))["listen_port"] for r in ids]
            opened = await connect_all(ports)
            for n in range(1, upgrades + 1):
                marks.clear()
                stamps.clear()
                CPU.clear()
                _stateful.forward_bundle(root, f"1.0.{n}", open_files, False, traced=True)
                await until(lambda: sum(p == "handoff_end" for p, _, _ in marks) == RESOURCES)
                slot = kernel.slot(_stateful.DRIVER)
                await until(lambda s=slot, v=f"1.0.{n}": s.manifest.version == v)  # type: ignore[misc]
                hooks = {r: await book.call(r, "traced", {}, None) for r in ids}
                found.append({**summary(marks), "per_move": per_move(stamps, hooks)})
            if await check_and_close(opened) != len(opened):
                raise RuntimeError("a connection did not survive the handovers")
        finally:
            kernel.shutdown()
    return found


def summary(marks: list[Mark]) -> dict[str, Any]:
    began = min(start for _, start, _ in marks)
    ended = max(end for _, _, end in marks)
    phases: dict[str, Any] = {"all_ms": (ended - began) * 1e3}
    for phase in PHASES:
        took = sorted((end - start) * 1e3 for p, start, end in marks if p == phase)
        last_start = max((start - began) * 1e3 for p, start, _ in marks if p == phase)
        phases[phase] = {
            "median_ms": statistics.median(took),
            "max_ms": took[-1],
            "last_start_ms": last_start,
        }
    return phases


def report(alone: list[dict[str, float]], kernel: list[dict[str, Any]]) -> str:
    n = _common.number
    rows = [
        [f"driver alone: 100 {name}() calls, ms", " ".join(n(r[f"{name}_ms"]) for r in alone)]
        for name in ("handoff", "takeover", "detach")
    ]
    rows.append(["through the kernel: all 100 moves, ms", " ".join(n(k["all_ms"]) for k in kernel)])
    for phase in PHASES:
        rows.append(
            [
                f"  {phase}: median / max / last started at, ms",
                "  ".join(
                    f"{n(k[phase]['median_ms'])}/{n(k[phase]['max_ms'])}/{n(k[phase]['last_start_ms'])}"
                    for k in kernel
                ),
            ]
        )
    for label in [k for k in kernel[0]["per_move"] if k.startswith("CPU")]:
        rows.append([f"  {label}, ms", " ".join(n(k["per_move"][label]["ms"]) for k in kernel)])
    for label, _, _ in STEPS:
        rows.append(
            [
                f"  one move: {label}, median/max ms",
                "  ".join(
                    f"{n(k['per_move'][label]['median_ms'])}/{n(k['per_move'][label]['max_ms'])}"
                    for k in kernel
                    if label in k["per_move"]
                ),
            ]
        )
    return _common.format_table(["100 resources, 1,000 connections", "each round"], rows)


async def run_all(
    root: Path, rounds: int, moves: int | None
) -> tuple[list[dict[str, float]], list[dict[str, Any]]]:
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
    try:
        target = echo.sockets[0].getsockname()[1]
        _common.progress("handover_phases: the driver alone ...")
        alone = await driver_alone(target, rounds)
        _common.progress("handover_phases: through the kernel ...")
        return alone, await through_kernel(root, target, rounds, moves)
    finally:
        echo.close()
        await echo.wait_closed()


def main() -> None:
    import uvloop

    parser = _common.bench_parser(__doc__.split("\n\n")[0], "one round instead of three", False)
    parser.add_argument(
        "--moves", type=int, help="the kernel's handover_moves (default: the daemon's default)"
    )
    options = parser.parse_args()
    rounds = 1 if options.quick else 3
    load_before = _common.machine()["loadavg_1m"]
    root = Path(tempfile.mkdtemp(prefix="drivebay-phases-"))
    try:
        alone, kernel = uvloop.run(run_all(root, rounds, options.moves))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(alone, kernel))
    info = {**_common.machine(), "loadavg_1m_before": load_before}
    print(f"\n{info['nproc']} CPUs, load {load_before} before, {info['loadavg_1m']} after")
    if options.json:
        _common.print_json_last({"driver_alone": alone, "through_kernel": kernel, "machine": info})


if __name__ == "__main__":
    main()
