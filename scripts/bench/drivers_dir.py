"""Status latency while the drivers dir holds hostile entries.

Run with the project venv, from the repository root, after compiling the
project's bytecode (as for ``supervise.py``)::

    .venv/bin/python -m compileall -q kernel sandbox protocol
    .venv/bin/python scripts/bench/drivers_dir.py [--quick] [--json]

drivebayd (default settings) runs 3 idle drivers. Then a directory of
100,000 files in 100 folders (20,000 with ``--quick``), a link to ``/`` and a
link to ``/usr`` are moved into its drivers dir (all three end INVALID). One
connected client sends ``status`` requests back to back for 20 s (5 s);
meanwhile a badly named file appears in or goes from the big directory
every 100 ms, so the daemon walks it again (up to ``bundles.max_members``
entries) and its verdict changes, several times a second. Figures: status
latency p50, p99 and max (ms), the requests timed, and the walks of the big
directory while timing (its verdicts logged).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common
from supervise import Drivebay, drivebay, reaping_orphans, wait_until

DRIVERS = ["idle-a", "idle-b", "idle-c"]
POKE_S = 0.1
WALKED = "rejected bundle: huge:"


def huge_tree(root: Path, files: int) -> Path:
    for i in range(100):
        folder = root / f"d{i:03}"
        folder.mkdir(parents=True)
        for j in range(files // 100):
            (folder / f"f{j:04}").touch()
    return root


def hostile(fleet: Drivebay, root: Path, files: int) -> Path:
    """Move the big directory and the links in; wait until all three are INVALID."""
    drivers = root / "drivers"
    os.rename(huge_tree(root / "staging" / "huge", files), drivers / "huge")
    (drivers / "oops").symlink_to("/")
    (drivers / "usr").symlink_to("/usr")

    def invalid() -> bool:
        rows = fleet.rows()
        return sum(row["state"] == "INVALID" for row in rows) == 3

    wait_until(invalid, 120, "the hostile entries INVALID", 0.2)
    return drivers / "huge"


def sample(fleet: Drivebay, huge: Path, seconds: float) -> tuple[list[int], int]:
    """Status latencies (ns) while ``huge`` keeps changing; and the walks meanwhile."""
    stop = threading.Event()

    def poke() -> None:  # a badly named file, there or not: the verdict changes each time
        bad = huge / "back\\slash"
        while not stop.wait(POKE_S):
            if bad.exists():
                bad.unlink()
            else:
                bad.touch()

    walks_before = fleet.log_path.read_text().count(WALKED)
    poker = threading.Thread(target=poke, name="poker")
    poker.start()
    try:
        samples = _common.sample_latency(fleet.status_request, seconds)
    finally:
        stop.set()
        poker.join()
    return samples, fleet.log_path.read_text().count(WALKED) - walks_before


def main(argv: list[str] | None = None) -> None:
    parser = _common.bench_parser(__doc__.split("\n\n")[0], "20,000 files, 5 s of requests")
    options = parser.parse_args(argv)
    files, seconds = (20_000, 5.0) if options.quick else (100_000, 20.0)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="drivebay-bench-") as tmp, reaping_orphans():
        root = Path(tmp) / "drivebay"
        with drivebay(root, options.envs_dir, DRIVERS) as fleet:
            huge = hostile(fleet, root, files)
            samples, walks = sample(fleet, huge, seconds)
    ordered = sorted(samples)
    result: dict[str, Any] = {
        "files": files,
        "requests": len(ordered),
        "walks": walks,
        "status_ms_p50": round(_common.percentile(ordered, 50) / 1e6, 3),
        "status_ms_p99": round(_common.percentile(ordered, 99) / 1e6, 3),
        "status_ms_max": round(ordered[-1] / 1e6, 3),
    }
    print(
        _common.format_table(
            ["figure", "value"], [[key, _common.number(value)] for key, value in result.items()]
        )
    )
    info = _common.machine()
    print(f"\n{info['nproc']} CPUs ({info['cpu']}), load {info['loadavg_1m']}, ", end="")
    print(f"{'quick' if options.quick else 'full'} run, {time.monotonic() - started:.0f} s")
    if options.json:
        _common.print_json_last({**result, "machine": info})


if __name__ == "__main__":
    main()
