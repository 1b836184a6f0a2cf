"""The distribution road, side by side with its floors, in one run.

Run with the project venv, from the repository root, after compiling the
project's bytecode (``scripts/test`` or ``scripts/run`` do)::

    .venv/bin/python scripts/bench/distribution.py [--quick] [--json]

Four comparisons, each measured by its own module (which says how):

- ``_build.py``: ``drivebay build`` (resolve, fetch, reproducible zip,
  check) against ``pip download`` + ``zip`` of the same dependencies;
- ``_signing.py``: what checking a bundle's signature costs per MB against
  the floor of hashing the same bytes with ``hashlib`` in process (CPU time);
  and drivebayd's start to 20 RUNNING with ``trust.signatures: require``
  against ``off``;
- ``_install.py``: ``drivebayctl install`` from a local TUF repository to
  RUNNING, warm env cache.

Targets: verification within 1.5x the sha256 floor; install to RUNNING under
2 s warm; ``require`` adds under 10 % to start-up.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import _build
import _common
import _install
import _signing


def measure(quick: bool, envs_dir: Any) -> dict[str, Any]:
    """Every figure, measured in turn (each module interleaves its own sides)."""
    result: dict[str, Any] = {}
    _common.progress("build against pip download + zip")
    result.update(_build.measure(3 if quick else 5))
    _common.progress("signature check against the sha256 floor")
    result.update(_signing.verify_figures(4 if quick else 16, runs=5))
    _common.progress("start-up, require against off")
    result.update(_signing.startup_figures(envs_dir, runs=5 if quick else 7))
    _common.progress("install from a local repository to RUNNING")
    result.update(_install.measure(3 if quick else 7, envs_dir))
    return result


def targets(result: dict[str, Any]) -> list[tuple[str, float, str, float]]:
    """(figure, value, comparison, goal) for each target of the issue."""
    return [
        ("verify / sha256 floor", result["verify_over_sha256"], "<=", 1.5),
        ("install to RUNNING, s", result["install_to_running_s"], "<", 2.0),
        ("start-up require / off", result["startup_require_over_off"], "<", 1.10),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = _common.bench_parser(__doc__.split("\n\n")[0], "fewer rounds and a 4 MiB bundle")
    options = parser.parse_args(argv)
    started = time.monotonic()
    result = measure(options.quick, options.envs_dir)
    n = _common.number
    rows = [
        [
            "build a bundle, s",
            n(result["build_s"]),
            f"pip download + zip {n(result['pip_download_zip_s'])}",
            n(result["build_s"] / result["pip_download_zip_s"]),
        ],
        [
            "build, lock reused, s",
            n(result["build_locked_s"]),
            f"pip download + zip {n(result['pip_download_zip_s'])}",
            n(result["build_locked_s"] / result["pip_download_zip_s"]),
        ],
        [
            "signature check, ms/MB",
            n(result["verify_ms_per_mb"]),
            f"sha256 floor {n(result['sha256_ms_per_mb'])}",
            n(result["verify_over_sha256"]),
        ],
        [
            "start-up to 20 RUNNING, require, s",
            n(result["startup_require_s"]),
            f"off {n(result['startup_off_s'])}",
            n(result["startup_require_over_off"]),
        ],
        ["install to RUNNING (warm), s", n(result["install_to_running_s"]), "", ""],
    ]
    print(_common.format_table(["figure", "drivebay", "peer / floor", "ratio"], rows))
    print()
    for name, value, comparison, goal in targets(result):
        met = value <= goal if comparison == "<=" else value < goal
        print(f"{name}: {value:.3f} (target {comparison} {goal}): {'met' if met else 'NOT met'}")
    info = _common.machine()
    print(
        f"{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_1m']}, {time.monotonic() - started:.0f} s"
    )
    if options.json:
        _common.print_json_last({**result, "machine": info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
