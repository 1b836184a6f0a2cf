"""Start and stop of many drivers: the start part of ``scale.py`` alone.

Run with the project venv, from the repository root, after compiling the
project's bytecode::

    .venv/bin/python scripts/bench/scale_start.py [--drivers 100] [--runs 1] \
        [--spares both|on|off] [--json]

For each run: a drivebayd with spares on, then one with spares off (as in
``scale.py``, 1 (a) and (f)): the drop -> every driver RUNNING, the p99 of
``status`` from an already connected client meanwhile (and the slow ones:
[sent at s, took ms]), drop -> every spare up, and ``stop all``. ``--json``
ends with one object: the figures of each run and their medians.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import scale
import supervise


async def one_run(
    root: Path, envs_dir: Path, drivers: int, modes: tuple[bool, ...]
) -> dict[str, Any]:
    names = scale.driver_names(drivers)
    figures: dict[str, Any] = {}
    for spares in modes:
        tag = "" if spares else "_nospare"
        async with scale.drivebayd(
            root / f"spares{spares}", envs_dir, scale.settings(spares)
        ) as daemon:
            start = await scale.start_all(daemon, names, spares=spares)
            figures[f"start_s{tag}"] = round(start.running_s, 2)
            figures[f"status_p99_ms{tag}"] = round(scale.p99(start.status_ms), 1)
            figures[f"status_slow{tag}"] = start.slow()
            if spares:
                figures["spares_s"] = round(start.spares_s or 0.0, 2)
                figures["stop_all_s"] = round(await scale.stop_all(daemon, names), 3)
    return figures


async def run_all(
    root: Path, envs_dir: Path, drivers: int, runs: int, modes: tuple[bool, ...]
) -> list[dict[str, Any]]:
    await scale.prime(root / "prime", envs_dir)
    results = []
    for run in range(runs):
        _common.progress(f"scale_start: run {run + 1} of {runs}, {drivers} drivers ...")
        results.append(await one_run(root / f"run{run}", envs_dir, drivers, modes))
        _common.progress(f"scale_start: {results[-1]}")
    return results


def main(argv: list[str] | None = None) -> None:
    import uvloop

    parser = _common.bench_parser(__doc__.split("\n\n")[0], "20 drivers")
    parser.add_argument("--drivers", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--spares", choices=("both", "on", "off"), default="both", help="which daemons to run"
    )
    options = parser.parse_args(argv)
    drivers = 20 if options.quick else options.drivers
    options.envs_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with supervise.reaping_orphans(), tempfile.TemporaryDirectory(prefix="drivebay-start-") as tmp:
        modes = {"both": (True, False), "on": (True,), "off": (False,)}[options.spares]
        results = uvloop.run(run_all(Path(tmp), options.envs_dir, drivers, options.runs, modes))
    keys = [k for k in results[0] if not k.startswith("status_slow")]
    medians = {k: statistics.median(r[k] for r in results) for k in keys}
    for key in keys:
        values = [r[key] for r in results]
        print(f"{key:24} median {medians[key]:>9}  range {min(values)} .. {max(values)}")
    print(f"{drivers} drivers, {options.runs} runs, {time.monotonic() - began:.0f} s")
    if options.json:
        _common.print_json_last({"runs": results, "medians": medians, "drivers": drivers})


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
