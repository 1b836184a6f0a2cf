"""Where the kernel's Python time goes in ``scale.py``'s calls: 4 drivers against 100.

Run with the project venv, from the repository root, after compiling the
project's bytecode::

    .venv/bin/python scripts/bench/scale_profile.py [--quick] [--json]

A ``Kernel`` runs in this process (no control socket, as ``upgrade.py``'s
in-process variant) with ``scale.py``'s drivers (100; 20 with ``--quick``)
and its two placements of 400 resources; ``scale.py``'s load (200 callers,
``book.call``) runs on each in turn, and cProfile records this process for
one window (3 s; 1 s with ``--quick``) of each. The table lists the
functions that take the most own time (tottime), in µs per call and calls
per call, side by side: what of the kernel's own code grows when the same
calls are spread over more drivers. The profiler slows everything it
records, the load included; compare the two columns, not the figures with
``scale.py``'s. Every process started here is stopped and reaped, also on
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import _common
import _scale_calls
import scale
import supervise
import upgrade

TOP = 25  # functions shown
WINDOW_S = {False: 3.0, True: 1.0}  # by --quick
WARMUP_S = 0.5

Row = tuple[str, float, float]  # function, own µs per call, calls per call


@asynccontextmanager
async def kernel(root: Path, envs_dir: Path, names: list[str]) -> AsyncIterator[Any]:
    """A Kernel in this process with one bundle per name RUNNING; always shut down."""
    import msgspec

    from drivebay.kernel.config import Config
    from drivebay.kernel.kernel import Kernel

    (root / "drivers").mkdir(parents=True)
    for name in names:
        bundle = scale.write_bundle(root / "staging", name)
        os.rename(bundle, root / "drivers" / bundle.name)
    settings = upgrade.daemon_settings(root, envs_dir)
    running = Kernel(msgspec.convert(settings, Config))

    async def ready() -> bool:
        return running.book is not None and all(running.running(name) for name in names)

    async with asyncio.TaskGroup() as group:
        group.create_task(running.run(), name="in-process kernel")
        try:
            await upgrade.settle(ready, scale.BUILD_S, f"in-process kernel: {len(names)} RUNNING")
            yield running
        finally:
            running.shutdown()


def _book_call(book: Any, resource: str) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    def call(args: dict[str, Any]) -> Awaitable[Any]:
        return book.call(resource, "record", args, None)  # type: ignore[no-any-return]

    return call


async def profiled(book: Any, label: str, placed: dict[str, str], window_s: float) -> list[Row]:
    """Add the resources, run the load, profile one window: the top rows."""
    await asyncio.gather(*(book.add(r, driver, None, []) for r, driver in placed.items()))
    calls = [_book_call(book, resource) for resource in placed]
    await asyncio.gather(*(call({"number": -1, "seq": 0}) for call in calls))  # attached
    load = _scale_calls.Load(_scale_calls.Target(label, calls, dict))
    profile = cProfile.Profile()
    async with asyncio.TaskGroup() as group:
        group.create_task(load.run())
        await asyncio.sleep(WARMUP_S)
        first = load.done
        profile.enable()
        await asyncio.sleep(window_s)  # the window profiled
        profile.disable()
        done = load.done - first
        load.stop.set()
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = [
        (f"{Path(file).name}:{line} {function}", own / done * 1e6, calls / done)
        for (file, line, function), (_, calls, own, _, _) in stats.items()
    ]
    total = sum(row[1] for row in rows)
    return [("(all, this process)", total, 1.0), *sorted(rows, key=lambda row: -row[1])[:TOP]]


async def run_all(root: Path, envs_dir: Path, quick: bool) -> dict[str, list[Row]]:
    names = scale.driver_names(20 if quick else 100)
    found = {}
    async with kernel(root, envs_dir, names) as running:
        for label, placed in _scale_calls.placement(names).items():
            _common.progress(f"scale_profile: {label} ...")
            found[label] = await profiled(running.book, label, placed, WINDOW_S[quick])
    return found


def report(found: dict[str, list[Row]]) -> str:
    (few, few_rows), (many, many_rows) = found.items()
    spread = {name: (own, calls) for name, own, calls in many_rows}
    listed = {name for name, _, _ in few_rows}
    rows = []
    for name, own, calls in few_rows:
        other = spread.get(name)
        rows.append([name, _common.number(own), f"{calls:.2f}", *_other(other)])
    for name, own, calls in many_rows:
        if name not in listed:
            rows.append([name, "-", "-", _common.number(own), f"{calls:.2f}"])
    headers = ["own time per call", f"{few}: µs", "calls", f"{many}: µs", "calls"]
    return _common.format_table(headers, rows)


def _other(values: tuple[float, float] | None) -> list[str]:
    if values is None:
        return ["-", "-"]
    return [_common.number(values[0]), f"{values[1]:.2f}"]


def main(argv: list[str] | None = None) -> None:
    import logging

    import uvloop

    parser = _common.bench_parser(__doc__.split("\n\n")[0], "20 drivers, 1 s windows")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="in-process kernel: %(message)s")
    options.envs_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with supervise.reaping_orphans(), tempfile.TemporaryDirectory(prefix="drivebay-prof-") as tmp:
        found = uvloop.run(run_all(Path(tmp), options.envs_dir, options.quick))
    print(report(found))
    info = _common.machine()
    print(
        f"\n{info['nproc']} CPUs, Python {info['python']}, load {info['loadavg_1m']}, "
        f"{'quick' if options.quick else 'full'} run, {time.monotonic() - started:.0f} s"
    )
    if options.json:
        _common.print_json_last(
            {
                "own_us_per_call": {
                    label: {name: [round(own, 3), round(calls, 3)] for name, own, calls in rows}
                    for label, rows in found.items()
                },
                "mode": "quick" if options.quick else "full",
                "machine": info,
            }
        )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # every process is reaped by then; spare the traceback
        sys.exit(130)
