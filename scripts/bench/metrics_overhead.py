"""What counting calls for /metrics costs: upgrade.py's drivebayd figure, metrics on and off.

Runs ``scripts/bench/upgrade.py --json`` with ``--metrics on`` and ``--metrics
off`` in turn (on, off, off, on, on, off, ...: neither setting always goes
first), ``--runs`` times each, and reports the median and range of the
drivebayd figure (calls/s, median of each run's windows) and of drivebayd's CPU
µs per call, and on/off ratios of the medians::

    .venv/bin/python scripts/bench/metrics_overhead.py [--runs 5] [--quick] [--json]

Each run starts its own daemons in a temporary directory (see upgrade.py).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import _common

UPGRADE = Path(__file__).resolve().parent / "upgrade.py"
DAEMON = "drivebayd (control socket)"


def one_run(metrics: str, quick: bool, envs_dir: Path) -> dict[str, float]:
    """One upgrade.py run: drivebayd's calls/s and its CPU µs per call."""
    command = [sys.executable, str(UPGRADE), "--json", "--metrics", metrics]
    command += ["--envs-dir", str(envs_dir), *(["--quick"] if quick else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"upgrade.py --metrics {metrics} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "calls_per_s": result["kernel_calls_per_s"],
        "daemon_cpu_us": result["cpu_us_per_call"][DAEMON]["daemon"],
    }


def order(runs: int) -> list[str]:
    """on, off, off, on, on, off, ...: each setting first in half the pairs."""
    pairs = [("on", "off") if n % 2 == 0 else ("off", "on") for n in range(runs)]
    return [setting for pair in pairs for setting in pair]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> None:
    parser = _common.bench_parser(__doc__.split("\n\n")[0], "upgrade.py --quick runs")
    parser.add_argument("--runs", type=int, default=5, help="runs of each setting (default 5)")
    options = parser.parse_args(argv)
    found: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for number, setting in enumerate(order(options.runs), 1):
        _common.progress(f"metrics overhead: run {number}/{2 * options.runs}, metrics {setting}")
        found[setting].append(one_run(setting, options.quick, options.envs_dir))
    figures: dict[str, Any] = {}
    for setting, runs in found.items():
        figures[setting] = {
            "calls_per_s": summary([run["calls_per_s"] for run in runs]),
            "daemon_cpu_us": summary([run["daemon_cpu_us"] for run in runs]),
            "runs": runs,
        }
    on, off = figures["on"], figures["off"]
    figures["calls_per_s_on_over_off"] = on["calls_per_s"]["median"] / off["calls_per_s"]["median"]
    figures["daemon_cpu_us_on_over_off"] = (
        on["daemon_cpu_us"]["median"] / off["daemon_cpu_us"]["median"]
    )
    n = _common.number
    rows = [
        [
            f"metrics {setting}",
            n(figures[setting]["calls_per_s"]["median"]),
            f"{n(figures[setting]['calls_per_s']['min'])} - "
            f"{n(figures[setting]['calls_per_s']['max'])}",
            n(figures[setting]["daemon_cpu_us"]["median"]),
            f"{n(figures[setting]['daemon_cpu_us']['min'])} - "
            f"{n(figures[setting]['daemon_cpu_us']['max'])}",
        ]
        for setting in ("on", "off")
    ]
    rows.append(
        [
            "on / off",
            f"{figures['calls_per_s_on_over_off']:.3f}",
            "",
            f"{figures['daemon_cpu_us_on_over_off']:.3f}",
            "",
        ]
    )
    headers = [
        f"drivebayd, {options.runs} runs each",
        "calls/s median",
        "range",
        "CPU µs/call median",
        "range",
    ]
    print(_common.format_table(headers, rows))
    if options.json:
        _common.print_json_last({**figures, "machine": _common.machine()})


if __name__ == "__main__":
    main()
