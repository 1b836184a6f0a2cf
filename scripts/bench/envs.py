"""Environments and cold start benchmark (issue 3): what a new driver costs.

Run with the project venv, from the repository root::

    .venv/bin/python scripts/bench/envs.py [--quick] [--json] [--work-dir DIR]

Side by side, in one run, with the same real wheels (msgspec and pyyaml, the
driver's dependencies, and uvloop, which ``lib/`` ships so that the builder
adds it as it does for every driver; downloaded once with pip into
``<work-dir>/wheels`` and reused after):

- environment build: ``sandbox.envs.ensure_env`` from a ``lib/`` of those
  wheels with a cold uv cache (a fresh empty cache dir each time) and with a
  warm one (the same cache dir, a new envs dir each time), against
  ``python -m venv`` + ``pip install --no-index --find-links`` (bytecode
  compiled by both). The warm builds are also split into uv's steps;
- cache hit: a second bundle with its own ``lib/`` holding the same wheels
  (same request, same key) asks ``ensure_env`` again: the first hit in a
  kernel process that has just started, the first hit in the process that
  built the env, and every later hit;
- driver cold start: ``DriverProcess.start()`` (spawn to Hello and Ready) of
  a trivial driver in that env, against ``python -I -c "import msgspec,
  asyncio"`` in the same env (subprocess wall time). The runtime dir is
  measured as ``ensure_runtime_dir`` makes it and, to show what bytecode is
  worth there, as read-only scratch copies without and with ``.pyc`` files.

Every figure is the median of several runs (fewer with ``--quick``, which
ends in under a minute). ``--json`` adds one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import hashlib
import os
import py_compile
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import uvloop

from drivebay import protocol
from drivebay.kernel.config import TimeoutSettings
from drivebay.kernel.drivers.process import DriverProcess
from drivebay.sandbox import envs
from drivebay.sandbox.env_key import EnvRequest, env_key
from drivebay.sandbox.runtime_dir import CHILD_MODULES, PACKAGE, ensure_runtime_dir
from drivebay.sandbox.spawn import PASSED_ENVIRONMENT, SpawnSpec

PACKAGES = ("msgspec", "pyyaml")  # the bench driver's dependencies
SHIPPED = (*PACKAGES, "uvloop")  # lib/: also the accelerator the builder adds
BASELINE = "import msgspec, asyncio"
# What a child imports before Ready, beyond the stdlib that asyncio already
# brings; in this order, -X importtime charges each module to one of them.
CHILD_IMPORTS = f"import asyncio, msgspec.msgpack, uvloop, ctypes, {PACKAGE}.runtime"
# A start is timed up to Ready, not to the child's exit: leave out the
# interpreter's teardown to compare imports with it.
QUIT = "import os; os._exit(0)"
TRIVIAL_DRIVER = '''"""A driver with one operation and nothing to import."""


class Trivial:
    def __init__(self, resource_id, properties):
        self.resource_id = resource_id

    async def echo(self, value=None):
        return value
'''
TARGET_HIT_MS = 50.0
TARGET_BUILD_SPEEDUP = 10.0
TARGET_START_RATIO = 1.3


@dataclass(frozen=True)
class Budget:
    """How many times each thing is measured."""

    uv_builds: int  # cold, and again warm
    pip_builds: int
    hits: int
    fresh_process_hits: int
    starts: int  # per cold-start variant
    imports: int  # per import command


FULL = Budget(uv_builds=5, pip_builds=3, hits=50, fresh_process_hits=5, starts=20, imports=20)
QUICK = Budget(uv_builds=2, pip_builds=1, hits=20, fresh_process_hits=2, starts=6, imports=8)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


# -- files -------------------------------------------------------------------------


def ensure_wheels(wheel_dir: Path) -> Path:
    """``wheel_dir`` holding one wheel of each of SHIPPED; downloaded if missing."""
    if all(_wheels_of(wheel_dir, name) for name in SHIPPED):
        return wheel_dir
    _common.progress(f"envs: downloading {', '.join(SHIPPED)} wheels into {wheel_dir} ...")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", *SHIPPED, "--only-binary=:all:"]
    subprocess.run([*pip, "-q", "-d", str(wheel_dir)], check=True)
    return wheel_dir


def _wheels_of(wheel_dir: Path, name: str) -> list[Path]:
    return sorted(wheel_dir.glob(f"{name}-*.whl"), key=lambda path: path.name.lower())


def make_lib(wheel_dir: Path, lib: Path) -> dict[str, str]:
    """Copy the wheels into a bundle's ``lib/``; their {file name: sha256}."""
    lib.mkdir(parents=True)
    wheels = {}
    for name in SHIPPED:
        source = _wheels_of(wheel_dir, name)[-1]
        shutil.copyfile(source, lib / source.name)
        wheels[source.name] = hashlib.sha256(source.read_bytes()).hexdigest()
    return wheels


def env_request(lib: Path, wheels: dict[str, str]) -> EnvRequest:
    return EnvRequest(Path(sys.executable), PACKAGES, wheels, lib, 1)


def make_read_only(root: Path) -> None:
    """Files 0o444, directories 0o555: as the bundle store and runtime dir leave them."""
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)


def remove_tree(root: Path) -> None:
    """Remove ``root``, read-only environments and copies included."""
    for dirpath, _, _ in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(root, ignore_errors=True)


def bytecode_count(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.pyc"))


def package_bytecode(venv: Path) -> int:
    """.pyc files of PACKAGES (not of pip or setuptools) in a venv."""
    site = next(venv.glob("lib/python*/site-packages"))
    return sum(bytecode_count(site / name) for name in ("msgspec", "yaml"))


def block_bytecode_writes(package: Path) -> None:
    """Make sure no child writes .pyc into ``package``, root or not.

    Read-only mode bits stop a driver's user, but not root, from creating
    ``__pycache__``: a plain file by that name stops everyone, so every
    import compiles from source, as it does for a non-root kernel.
    """
    (package / "__pycache__").write_bytes(b"")


# -- environment builds and cache hits ---------------------------------------------


@contextlib.contextmanager
def uv_steps(record: dict[str, list[float]]) -> Iterator[None]:
    """Time every uv invocation of ``ensure_env`` by its first two arguments.

    Peeks at the private ``sandbox.envs._Uv`` (a breakdown only: skipped if
    it is gone).
    """
    runner = getattr(envs, "_Uv", None)
    if runner is None:
        yield
        return
    original = runner.run

    async def timed(self: Any, step: str, args: list[str]) -> None:
        start = time.perf_counter()
        await original(self, step, args)
        record.setdefault(f"uv {' '.join(args[:2])}", []).append(elapsed_ms(start))

    runner.run = timed
    try:
        yield
    finally:
        runner.run = original


async def timed_ensure(req: EnvRequest, envs_dir: Path, cache: Path) -> tuple[float, envs.Env]:
    start = time.perf_counter()
    env = await envs.ensure_env(req, envs_dir, uv_cache=cache)
    return elapsed_ms(start), env


async def measure_builds(req: EnvRequest, scratch: Path, runs: int) -> dict[str, Any]:
    """Cold-cache and warm-cache builds, taking turns; the last env is kept for the rest.

    Every build gets a new envs dir; a cold one also a new uv cache dir, a
    warm one the cache of the first cold build.
    """
    await asyncio.to_thread(env_key, req)  # the interpreter probe, once per process
    cold: list[float] = []
    warm: list[float] = []
    steps: dict[str, list[float]] = {}
    for run in range(runs):
        _common.progress(f"envs: uv builds {run + 1}/{runs}, cold and warm cache ...")
        took, _ = await timed_ensure(req, scratch / f"envs-cold-{run}", scratch / f"uv-{run}")
        cold.append(took)
        with uv_steps(steps):
            took, env = await timed_ensure(req, scratch / f"envs-warm-{run}", scratch / "uv-0")
        warm.append(took)
    return {"cold": cold, "warm": warm, "steps": steps, "env": env}


async def measure_hits(req: EnvRequest, envs_dir: Path, runs: int) -> dict[str, Any]:
    """``ensure_env`` for an env that exists: the first hit here, then the rest."""
    hits = [(await timed_ensure(req, envs_dir, envs_dir / "no-cache"))[0] for _ in range(runs)]
    return {"after_build": hits[0], "repeat": hits[1:]}


async def environments(
    req: EnvRequest, second: EnvRequest, scratch: Path, budget: Budget
) -> dict[str, Any]:
    builds = await measure_builds(req, scratch, budget.uv_builds)
    env = builds["env"]
    if env_key(second) != env.key:
        raise RuntimeError("the second bundle's request should name the same env")
    builds["hits"] = await measure_hits(second, env.path.parent, budget.hits)
    return builds


def fresh_process_hit(second: EnvRequest, envs_dir: Path) -> float:
    """The first ``ensure_env`` hit of a kernel process that has just started."""
    argv = [sys.executable, __file__, "--probe-hit", str(envs_dir), str(second.wheel_dir)]
    argv += [f"{name}={digest}" for name, digest in second.wheels.items()]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def probe_hit(envs_dir: str, lib: str, wheels: list[str]) -> None:
    """In a fresh process: time one ``ensure_env`` of an existing env, print ms."""
    req = env_request(Path(lib), dict(item.split("=", 1) for item in wheels))

    async def once() -> float:
        took, _ = await timed_ensure(req, Path(envs_dir), Path(envs_dir) / "no-cache")
        return took

    print(f"{uvloop.run(once()):.3f}")


def venv_pip(lib: Path, target: Path) -> float:
    """``python -m venv`` + offline ``pip install`` of the same wheels, in ms."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--isolated", "-q"]
    pip += ["--disable-pip-version-check", "--no-index", "--find-links", str(lib), *SHIPPED]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, env=environ)
    subprocess.run(pip, check=True, env=environ)
    return elapsed_ms(start)


def measure_venv_pip(lib: Path, scratch: Path, runs: int) -> dict[str, Any]:
    samples = []
    for run in range(runs):
        _common.progress(f"envs: venv + pip {run + 1}/{runs} ...")
        samples.append(venv_pip(lib, scratch / f"venv-pip-{run}"))
    return {"samples": samples, "bytecode": package_bytecode(scratch / "venv-pip-0")}


# -- cold start ----------------------------------------------------------------------


def runtime_copy(target: Path, *, compiled: bool) -> Path:
    """A read-only runtime dir like ``ensure_runtime_dir``'s, with or without .pyc."""
    source = Path(protocol.__file__).parent
    package = target / PACKAGE
    package.mkdir(parents=True)
    for name in CHILD_MODULES:
        shutil.copyfile(source / name, package / name)
    if compiled:
        mode = py_compile.PycInvalidationMode.CHECKED_HASH
        compileall.compile_dir(package, quiet=1, invalidation_mode=mode)
    else:
        block_bytecode_writes(package)
    make_read_only(target)
    return target


def trivial_driver(src: Path) -> Path:
    """The driver's ``src/``, read-only and without bytecode, as the bundle store has it."""
    src.mkdir(parents=True)
    (src / "trivial.py").write_text(TRIVIAL_DRIVER)
    block_bytecode_writes(src)
    make_read_only(src)
    return src


def start_spec(python: Path, runtime_dir: Path, src: Path, cwd: Path) -> SpawnSpec:
    return SpawnSpec(
        python=python,
        runtime_dir=runtime_dir,
        entrypoint="trivial:Trivial",
        driver="trivial",
        version="1.0.0",
        cwd=cwd,
        src=src,
    )


async def one_start(spec: SpawnSpec) -> float:
    """Spawn to Hello and Ready, in ms; the child is stopped (untimed) after."""
    proc = DriverProcess(spec, TimeoutSettings(start_s=30))
    start = time.perf_counter()
    await proc.start()
    took = elapsed_ms(start)
    await proc.stop()
    if proc.hello_codec.split()[0] != "msgspec" or proc.hello_loop != "uvloop":
        said = f"{proc.hello_codec!r} on {proc.hello_loop!r}"
        raise RuntimeError(f"the child should use msgspec on uvloop, it said {said}")
    return took


async def measure_starts(specs: dict[str, SpawnSpec], runs: int) -> dict[str, list[float]]:
    """Every variant once untimed, then ``runs`` rounds taking turns."""
    samples: dict[str, list[float]] = {name: [] for name in specs}
    for spec in specs.values():
        await one_start(spec)
    for _ in range(runs):
        for name, spec in specs.items():
            samples[name].append(await one_start(spec))
    return samples


def child_environ() -> dict[str, str]:
    """The environment a driver child gets, less its DRIVEBAY_* settings."""
    return {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}


def measure_imports(
    python: Path, commands: dict[str, str], cwd: Path, runs: int
) -> dict[str, list[float]]:
    """Wall time of ``python -I -c command``, in ms; commands take turns."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(runs + 1):
        for name, code in commands.items():
            start = time.perf_counter()
            subprocess.run(
                [str(python), "-I", "-c", code], check=True, cwd=cwd, env=child_environ()
            )
            if round_:  # round 0 warms the page cache
                samples[name].append(elapsed_ms(start))
    return samples


def child_imports(runtime_dir: Path) -> str:
    return f"import sys; sys.path.insert(0, {str(runtime_dir)!r}); {CHILD_IMPORTS}"


def import_breakdown(python: Path, code: str, cwd: Path, runs: int) -> dict[str, float]:
    """Median cumulative ms of each top-level package ``code`` imports (-X importtime)."""
    samples: dict[str, list[float]] = {}
    argv = [str(python), "-I", "-X", "importtime", "-c", code]
    for _ in range(runs):
        done = subprocess.run(
            argv, check=True, cwd=cwd, env=child_environ(), capture_output=True, text=True
        )
        totals: dict[str, float] = {}
        for line in done.stderr.splitlines():
            parts = line.split("|")
            nested = parts[-1].startswith("  ")
            if len(parts) != 3 or nested or not parts[1].strip().isdigit():
                continue
            package = parts[-1].strip().split(".")[0]
            totals[package] = totals.get(package, 0.0) + int(parts[1]) / 1e3
        for package, total in totals.items():
            samples.setdefault(package, []).append(total)
    wanted = CHILD_IMPORTS.removeprefix("import ").split(", ")
    return {name.split(".")[0]: median(samples[name.split(".")[0]]) for name in wanted}


def runtime_compile_ms(runtime_dir: Path, runs: int) -> float:
    """What compiling the runtime's modules from source costs (each start without .pyc)."""
    sources = {name: (runtime_dir / PACKAGE / name).read_text() for name in CHILD_MODULES}
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for name, text in sources.items():
            compile(text, name, "exec", dont_inherit=True)
        samples.append(elapsed_ms(start))
    return median(samples)


def cold_start(python: Path, scratch: Path, budget: Budget) -> dict[str, Any]:
    _common.progress("envs: driver cold starts and import baselines ...")
    as_made = ensure_runtime_dir(scratch / "state")
    as_made_bytecode = bytecode_count(as_made)  # before a child (as root) can add some
    bare = runtime_copy(scratch / "runtime-no-pyc", compiled=False)
    compiled = runtime_copy(scratch / "runtime-pyc", compiled=True)
    src = trivial_driver(scratch / "driver" / "src")
    cwd = scratch / "work"
    cwd.mkdir()
    specs = {
        "as_made": start_spec(python, as_made, src, cwd),
        "no_bytecode": start_spec(python, bare, src, cwd),
        "bytecode": start_spec(python, compiled, src, cwd),
    }
    starts = uvloop.run(measure_starts(specs, budget.starts))
    commands = {
        "startup": "pass",
        "baseline": BASELINE,
        "baseline_no_teardown": f"{BASELINE}; {QUIT}",
        "child_no_bytecode": f"{child_imports(bare)}; {QUIT}",
        "child_bytecode": f"{child_imports(compiled)}; {QUIT}",
    }
    imports = measure_imports(python, commands, cwd, budget.imports)
    return {
        "starts": starts,
        "imports": imports,
        "breakdown": import_breakdown(python, child_imports(compiled), cwd, budget.imports),
        "as_made_bytecode": as_made_bytecode,
        "compile_ms": runtime_compile_ms(bare, budget.imports),
    }


# -- running and reporting ------------------------------------------------------------


def run_all(budget: Budget, work_dir: Path) -> dict[str, Any]:
    wheel_dir = ensure_wheels(work_dir / "wheels")
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
    try:
        first_lib, second_lib = scratch / "bundle-1" / "lib", scratch / "bundle-2" / "lib"
        wheels = make_lib(wheel_dir, first_lib)
        make_lib(wheel_dir, second_lib)
        req, second = env_request(first_lib, wheels), env_request(second_lib, wheels)
        results = uvloop.run(environments(req, second, scratch, budget))
        env = results.pop("env")
        results["env_bytecode"] = package_bytecode(env.path)
        results["fresh_hits"] = [
            fresh_process_hit(second, env.path.parent) for _ in range(budget.fresh_process_hits)
        ]
        results["venv_pip"] = measure_venv_pip(second_lib, scratch, budget.pip_builds)
        results["cold_start"] = cold_start(env.python, scratch, budget)
        return results
    finally:
        remove_tree(scratch)


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (medians, ms), ratios and targets, as ``--json`` gives them."""
    start, imports = results["cold_start"]["starts"], results["cold_start"]["imports"]
    fig = {
        "env_build_cold_ms": median(results["cold"]),
        "env_build_warm_ms": median(results["warm"]),
        "env_cache_hit_ms": median(results["hits"]["repeat"]),
        "env_cache_hit_after_build_ms": results["hits"]["after_build"],
        "env_cache_hit_fresh_process_ms": median(results["fresh_hits"]),
        "venv_pip_ms": median(results["venv_pip"]["samples"]),
        "cold_start_ms": median(start["as_made"]),
        "cold_start_runtime_no_bytecode_ms": median(start["no_bytecode"]),
        "cold_start_runtime_bytecode_ms": median(start["bytecode"]),
        "import_baseline_ms": median(imports["baseline"]),
        "import_baseline_no_teardown_ms": median(imports["baseline_no_teardown"]),
        "interpreter_startup_ms": median(imports["startup"]),
        "child_imports_runtime_no_bytecode_ms": median(imports["child_no_bytecode"]),
        "child_imports_runtime_bytecode_ms": median(imports["child_bytecode"]),
        "runtime_compile_ms": results["cold_start"]["compile_ms"],
        "runtime_dir_bytecode_files": results["cold_start"]["as_made_bytecode"],
        "child_import_breakdown_ms": results["cold_start"]["breakdown"],
    }
    base = fig["import_baseline_ms"]
    fig |= {
        "ratio_venv_pip_over_warm_build": fig["venv_pip_ms"] / fig["env_build_warm_ms"],
        "ratio_venv_pip_over_cold_build": fig["venv_pip_ms"] / fig["env_build_cold_ms"],
        "ratio_cold_start_over_import": fig["cold_start_ms"] / base,
        "ratio_cold_start_no_bytecode_over_import": fig["cold_start_runtime_no_bytecode_ms"] / base,
        "ratio_cold_start_bytecode_over_import": fig["cold_start_runtime_bytecode_ms"] / base,
        "ratio_cold_start_over_import_no_teardown": (
            fig["cold_start_ms"] / fig["import_baseline_no_teardown_ms"]
        ),
    }
    worst_hit = max(fig["env_cache_hit_ms"], fig["env_cache_hit_fresh_process_ms"])
    fig["targets_met"] = {
        "cache_hit_under_50ms": worst_hit < TARGET_HIT_MS,
        "warm_build_10x_faster_than_venv_pip": (
            fig["ratio_venv_pip_over_warm_build"] >= TARGET_BUILD_SPEEDUP
        ),
        "cold_start_within_1.3x_import": fig["ratio_cold_start_over_import"] <= TARGET_START_RATIO,
    }
    return fig


def _row(name: str, samples: list[float], ratio: str) -> list[str]:
    spread = f"{_common.number(min(samples))}-{_common.number(max(samples))}"
    return [name, _common.number(median(samples)), spread, str(len(samples)), ratio]


def _times(value: float) -> str:
    return f"{value:.2f}x"


def env_table(results: dict[str, Any], fig: dict[str, Any]) -> str:
    pip = fig["venv_pip_ms"]
    hits = results["hits"]
    rows = [
        _row("venv + pip install (offline)", results["venv_pip"]["samples"], _times(1)),
        _row(
            "ensure_env build, cold uv cache",
            results["cold"],
            _times(pip / median(results["cold"])),
        ),
        _row(
            "ensure_env build, warm uv cache",
            results["warm"],
            _times(pip / median(results["warm"])),
        ),
    ]
    rows += [
        _row(f"  of which {step}", samples, "")
        for step, samples in sorted(results["steps"].items())
    ]
    rows += [
        _row("cache hit, fresh kernel process", results["fresh_hits"], ""),
        _row("cache hit, first after the build", [hits["after_build"]], ""),
        _row("cache hit, later", hits["repeat"], ""),
    ]
    headers = ["environment (msgspec + pyyaml)", "median ms", "min-max", "runs", "pip / this"]
    return _common.format_table(headers, rows)


def start_table(results: dict[str, Any], fig: dict[str, Any]) -> str:
    cold, base = results["cold_start"], fig["import_baseline_ms"]
    starts, imports = cold["starts"], cold["imports"]

    def row(name: str, samples: list[float]) -> list[str]:
        return _row(name, samples, _times(median(samples) / base))

    made = f"runtime as made, {cold['as_made_bytecode']} .pyc"
    rows = [
        row(f'python -I -c "{BASELINE}"', imports["baseline"]),
        row("  the same, no teardown (os._exit)", imports["baseline_no_teardown"]),
        row('python -I -c "pass"', imports["startup"]),
        row("child's imports, runtime without .pyc *", imports["child_no_bytecode"]),
        row("child's imports, runtime with .pyc *", imports["child_bytecode"]),
        row(f"cold start, {made}", starts["as_made"]),
        row("cold start, runtime without .pyc", starts["no_bytecode"]),
        row("cold start, runtime with .pyc", starts["bytecode"]),
    ]
    headers = ["driver start (same env)", "median ms", "min-max", "runs", "/ baseline"]
    return _common.format_table(headers, rows)


def targets_table(fig: dict[str, Any]) -> str:
    met = fig["targets_met"]
    hit = max(fig["env_cache_hit_ms"], fig["env_cache_hit_fresh_process_ms"])
    rows = [
        [
            "cache hit < 50 ms (worst of the hits)",
            f"{_common.number(hit)} ms",
            _verdict(met["cache_hit_under_50ms"]),
        ],
        [
            "warm build >= 10x faster than venv + pip",
            _times(fig["ratio_venv_pip_over_warm_build"]),
            _verdict(met["warm_build_10x_faster_than_venv_pip"]),
        ],
        [
            "cold start <= 1.3x import baseline",
            _times(fig["ratio_cold_start_over_import"]),
            _verdict(met["cold_start_within_1.3x_import"]),
        ],
    ]
    return _common.format_table(["target", "measured", "verdict"], rows)


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def footer(results: dict[str, Any], quick: bool, seconds: float, load: float) -> str:
    m = _common.machine()
    cold = results["cold_start"]
    parts = ", ".join(f"{name} {ms:.1f}" for name, ms in cold["breakdown"].items())
    return (
        f"* {CHILD_IMPORTS}; {QUIT}\n"
        f"  by package (-X importtime, cumulative ms, runtime with .pyc): {parts}\n"
        f"runtime modules compile from source in {cold['compile_ms']:.1f} ms; "
        f".pyc of msgspec+yaml: uv env {results['env_bytecode']}, "
        f"venv+pip {results['venv_pip']['bytecode']}\n"
        f"machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"Linux {m['kernel']}, load (1 min) {load} at start, {m['loadavg_1m']} at end; "
        f"{'--quick' if quick else 'full'} run in {seconds:.0f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (under a minute)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    default_work = Path(tempfile.gettempdir()) / "drivebay-bench-envs"
    parser.add_argument("--work-dir", type=Path, default=default_work, help="wheels and scratch")
    parser.add_argument("--probe-hit", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.probe_hit:
        probe_hit(options.probe_hit[0], options.probe_hit[1], options.probe_hit[2:])
        return
    started, load = time.monotonic(), round(os.getloadavg()[0], 2)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    results = run_all(QUICK if options.quick else FULL, options.work_dir)
    fig = figures(results)
    tables = [env_table(results, fig), start_table(results, fig), targets_table(fig)]
    print("\n\n".join(tables))
    print(footer(results, options.quick, time.monotonic() - started, load))
    if options.json:
        machine = _common.machine() | {"loadavg_1m_start": load}
        _common.print_json_last(fig | {"machine": machine, "quick": options.quick})


if __name__ == "__main__":
    main()
