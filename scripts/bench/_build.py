"""``drivebay build`` against ``pip download`` + ``zip`` of the same dependencies.

Run with the project venv, from the repository root::

    .venv/bin/python scripts/bench/_build.py [--quick] [--json]

One driver made by ``drivebay new`` declares ``DEPENDENCIES``; both sides
get them plus the two accelerators (msgspec, uvloop) from the package index
pip and uv are configured with, for this machine's Python and platform:

- *drivebay build*: ``drivebay build --upgrade`` (so every run resolves with
  uv again instead of reusing ``requirements.lock``), then the download of
  the locked wheels by pip, the reproducible zip and the daemon's reader
  over it;
- *pip download + zip*: ``pip download --only-binary=:all:`` of the same
  requirements into ``lib/`` (pip resolves them too), then ``zip -r -X`` of
  the bundle, nothing checked, nothing reproducible.

Both run as the commands a person types (a fresh interpreter each), first
once untimed (caches warm: uv's, pip's HTTP cache), then in alternating
rounds; each figure is the median wall time. ``build_locked_s`` is
``drivebay build`` again without ``--upgrade``: the lock is reused, uv does
not run. ``measure()`` returns ``{"build_s": ..., "build_locked_s": ...,
"pip_download_zip_s": ...}`` for ``distribution.py``.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

DEPENDENCIES = ("requests>=2.31", "pyyaml>=6")
ACCELERATORS = ("msgspec>=0.18", "uvloop")


def _timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-800:]}")
    return took


def make_driver(root: Path) -> Path:
    """A new driver declaring ``DEPENDENCIES``."""
    from drivebay.author.new import write_driver

    bundle = root / "bench-driver"
    write_driver("bench-driver", "storage", bundle)
    manifest = bundle / "driver.yaml"
    listed = ", ".join(f'"{dep}"' for dep in DEPENDENCIES)
    manifest.write_text(
        manifest.read_text().replace("dependencies: []", f"dependencies: [{listed}]")
    )
    return bundle


def drivebay_build(bundle: Path, out: Path, *, resolve: bool = True) -> float:
    """``drivebay build``; ``resolve``: with ``--upgrade`` (uv resolves again)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "drivebay.author.cli", "build", str(bundle), "-o", str(out)]
    return _timed([*command, "--upgrade"] if resolve else command, bundle.parent)


def pip_download_zip(bundle: Path, work: Path) -> float:
    """The hand-made way: fetch the wheels into a copy's lib/, zip the copy."""
    shutil.rmtree(work, ignore_errors=True)
    copy = work / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("dist", "requirements.lock"))
    start = time.perf_counter()
    pip = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--quiet"]
    pip += ["--disable-pip-version-check", "-d", str(copy / "lib"), *DEPENDENCIES, *ACCELERATORS]
    _timed(pip, work)
    _timed(["zip", "-r", "-X", "-q", str(work / "bench-driver-0.1.0.zip"), "."], copy)
    return time.perf_counter() - start


def measure(runs: int) -> dict[str, Any]:
    """Median seconds of each way over ``runs`` alternating rounds (after one untimed)."""
    samples: dict[str, list[float]] = {
        "build_s": [],
        "build_locked_s": [],
        "pip_download_zip_s": [],
    }
    with tempfile.TemporaryDirectory(prefix="drivebay-bench-build-") as scratch:
        root = Path(scratch)
        bundle = make_driver(root)
        drivebay_build(bundle, root / "out")
        pip_download_zip(bundle, root / "by-hand")
        for run in range(runs):
            _common.progress(f"build: round {run + 1}/{runs} ...")
            samples["build_s"].append(drivebay_build(bundle, root / "out"))
            samples["build_locked_s"].append(drivebay_build(bundle, root / "out", resolve=False))
            samples["pip_download_zip_s"].append(pip_download_zip(bundle, root / "by-hand"))
        built = next((root / "out").glob("*.zip"))
        wheels = sorted(p.name for p in (root / "by-hand" / "bundle" / "lib").glob("*.whl"))
        result: dict[str, Any] = {name: statistics.median(s) for name, s in samples.items()}
        result.update(
            samples=samples,
            dependencies=[*DEPENDENCIES, *ACCELERATORS],
            wheels=wheels,
            zip_bytes=built.stat().st_size,
        )
    return result


def main() -> None:
    parser = _common.bench_parser(
        "drivebay build against pip download + zip", "3 rounds instead of 7", envs=False
    )
    args = parser.parse_args()
    result = measure(3 if args.quick else 7)
    rows = [
        ["drivebay build (resolve, fetch, zip, check)", _common.number(result["build_s"])],
        ["drivebay build, lock reused", _common.number(result["build_locked_s"])],
        ["pip download + zip", _common.number(result["pip_download_zip_s"])],
    ]
    print(_common.format_table(["way", "median s"], rows))
    print(f"dependencies: {', '.join(result['dependencies'])}; {len(result['wheels'])} wheels")
    if args.json:
        _common.print_json_last({**result, "machine": _common.machine()})


if __name__ == "__main__":
    main()
