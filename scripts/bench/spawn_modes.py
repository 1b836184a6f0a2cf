"""How fast a driver process is made and takes over, forked from a template
(``spawn: fork-server``) or exec'd (``spawn: exec``), side by side.

In one process, the two modes interleaved round by round (a busy machine
slows both alike), with the bench driver in the shared bench env:

- launch: ``DriverProcess.launch`` (the process made, its Hello read): what
  a warm spare costs to make;
- exit seen: ``kill -9`` of the running driver until the daemon has reaped
  it (its exit status known);
- promote: the spare's Welcome until its Ready (the driver class loaded);
- takeover: exit seen + promote, the part of crash -> RUNNING that depends on
  how the processes were made.

``--json`` ends with ``{mode: {figure: {p50, p99, min}}}``. ``scale.py
--spawn-modes`` measures the PSS and crash -> RUNNING through a daemon.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bench" / "src"
MODES = ("fork-server", "exec")
FULL_ROUNDS, QUICK_ROUNDS = 40, 10


async def measure(rounds: int, workdir: Path, envs_dir: Path) -> dict[str, dict[str, list[float]]]:
    from drivebay.kernel.config import TimeoutSettings
    from drivebay.kernel.drivers.process import DriverProcess
    from drivebay.protocol.versions import PROTOCOL_MAX
    from drivebay.sandbox.envs import EnvRequest, ensure_env
    from drivebay.sandbox.fork_server import Templates
    from drivebay.sandbox.runtime_dir import ensure_runtime_dir
    from drivebay.sandbox.spawn import SpawnSpec

    env = await ensure_env(EnvRequest(Path(sys.executable), (), {}, None, PROTOCOL_MAX), envs_dir)
    templates = Templates()
    timeouts = TimeoutSettings(start_s=60)
    specs = {
        mode: SpawnSpec(
            python=env.python,
            runtime_dir=ensure_runtime_dir(workdir / "state"),
            entrypoint="benchdriver:Bench",
            driver="bench",
            version="1.0.0",
            cwd=workdir,
            src=FIXTURE,
            templates=templates if mode == "fork-server" else None,
        )
        for mode in MODES
    }
    found: dict[str, dict[str, list[float]]] = {
        mode: {"launch_ms": [], "exit_seen_ms": [], "promote_ms": [], "takeover_ms": []}
        for mode in MODES
    }
    try:
        for round_ in range(rounds):
            _common.progress(f"spawn_modes: round {round_ + 1}/{rounds}")
            for mode, spec in specs.items():
                running = DriverProcess(spec, timeouts)
                await running.start()
                spare = DriverProcess(spec, timeouts)
                began = time.perf_counter()
                await spare.launch()
                launched = time.perf_counter()
                assert running.pid is not None
                os.kill(running.pid, signal.SIGKILL)
                await running.wait()
                exited = time.perf_counter()
                await spare.finish_start()
                ready = time.perf_counter()
                await spare.stop()
                figures = found[mode]
                figures["launch_ms"].append((launched - began) * 1e3)
                figures["exit_seen_ms"].append((exited - launched) * 1e3)
                figures["promote_ms"].append((ready - exited) * 1e3)
                figures["takeover_ms"].append((ready - launched) * 1e3)
    finally:
        await templates.close()
    return found


def summary(found: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    return {
        mode: {
            name: {
                "p50": round(statistics.median(values), 2),
                "p99": round(_common.percentile(sorted(values), 99), 2),
                "min": round(min(values), 2),
            }
            for name, values in figures.items()
        }
        for mode, figures in found.items()
    }


def main() -> None:
    import uvloop

    parser = _common.bench_parser(__doc__.split("\n\n")[0], f"{QUICK_ROUNDS} rounds")
    options = parser.parse_args()
    rounds = QUICK_ROUNDS if options.quick else FULL_ROUNDS
    options.envs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="drivebay-spawn-") as tmp:
        found = uvloop.run(measure(rounds, Path(tmp), options.envs_dir))
    result = summary(found)
    rows = [
        [name, *(f"{result[m][name]['p50']} / {result[m][name]['p99']}" for m in MODES)]
        for name in result[MODES[0]]
    ]
    print(_common.format_table([f"ms, p50 / p99 of {rounds}", *MODES], rows))
    load = os.getloadavg()[0]
    print(f"\n{os.cpu_count()} CPUs, load {load:.1f} after, {rounds} rounds")
    if options.json:
        _common.print_json_last({"spawn_modes": result, "rounds": rounds, "loadavg_1m": load})


if __name__ == "__main__":
    main()
