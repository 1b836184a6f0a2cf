"""What signature checks cost: per MB of bundle, and at daemon start-up.

Run with the project venv, from the repository root, after compiling the
project's bytecode (as for ``supervise.py``)::

    .venv/bin/python -m compileall -q kernel sandbox protocol
    .venv/bin/python scripts/bench/_signing.py [--quick] [--json]

``verify_figures``: a bundle of 16 MiB (4 MiB with ``--quick``) in memory,
four wheel-sized files of random bytes and 40 small sources, signed through
an authority's certificate. Timed, in process and interleaved over runs:
``sandbox.trust.check_signature`` on it (what ``require`` adds to reading a
bundle: every file hashed, the listing rebuilt, two Ed25519 checks), and the
floor, ``hashlib.sha256`` of each of the same files; each run handles 256 MiB
(the bundle checked again and again). Medians in ms of CPU time per MiB:
on a loaded machine, wall time would measure the other processes too.

``startup_figures``: drivebayd (default settings, warm environment store)
started on a drivers dir already holding 20 signed zip bundles (idle
drivers), from its exec until ``status`` shows all 20 RUNNING, with
``trust.signatures: require`` (the authority in ``trust.authorities``)
against ``off``; runs interleaved (off, require, require, off, ...), each on
a fresh state dir. Medians in seconds.

The functions return figures (dicts) for ``distribution.py`` to report.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from supervise import BIN, _connect, daemon_process, reaping_orphans, wait_until, write_bundle

from drivebay.sandbox.bundle_layout import SIGNATURE_FILE, check_layout
from drivebay.sandbox.bundle_reader import read_bundle
from drivebay.sandbox.signing import (
    issue_certificate,
    key_id,
    raw_public,
    read_private_key,
    sign_files,
    write_key_pair,
)
from drivebay.sandbox.trust import TrustedKey, TrustPolicy, check_signature

MiB = 1 << 20


# -- verification per MB ---------------------------------------------------------------


def _bundle_files(total_mib: int) -> dict[str, bytes]:
    files = {
        "driver.yaml": (
            b"name: acme-big\nversion: 1.0.0\ncategory: storage\n"
            b"description: a big bundle\nentrypoint: acme_big:Driver\n"
        ),
        "LICENSE": b"Apache-2.0\n",
        "src/acme_big.py": b"class Driver:\n    pass\n",
    }
    files.update({f"src/acme_big/m{i:02}.py": os.urandom(4096) for i in range(40)})
    wheel = (total_mib * MiB - sum(map(len, files.values()))) // 4
    files.update({f"lib/dep{i}-1.0-py3-none-any.whl": os.urandom(wheel) for i in range(4)})
    return files


def verify_figures(total_mib: int = 16, runs: int = 5) -> dict[str, Any]:
    """ms per MiB of ``check_signature`` and of the sha256 floor (medians of
    ``runs`` interleaved runs), and their ratio."""
    vendor, authority = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    files = _bundle_files(total_mib)
    cert = issue_certificate(vendor.public_key(), authority, ["acme-*"])
    files[SIGNATURE_FILE] = sign_files(files, vendor, cert)
    bundle = check_layout("acme-big-1.0.0.zip", Path("acme-big-1.0.0.zip"), files, set())
    public = authority.public_key()
    policy = TrustPolicy(
        "require", authorities={key_id(public): TrustedKey("a.pub", raw_public(public))}
    )
    mib = sum(len(data) for path, data in files.items() if path != SIGNATURE_FILE) / MiB

    def floor() -> None:
        for path, data in files.items():
            if path != SIGNATURE_FILE:
                hashlib.sha256(data).digest()

    def verify() -> None:
        assert check_signature(bundle, policy, time.time()).problem is None

    timed: dict[str, list[float]] = {"verify": [], "sha256": []}
    repeat = max(1, round(256 / mib))  # a run handles 256 MiB: one pass is over too soon
    for run in range(runs + 1):  # the first is a warm-up
        order = [("verify", verify), ("sha256", floor)]
        for label, work in order if run % 2 else reversed(order):
            start = time.process_time()
            for _ in range(repeat):
                work()
            if run:
                timed[label].append((time.process_time() - start) * 1e3 / mib / repeat)
    verify_ms, sha_ms = (statistics.median(timed[k]) for k in ("verify", "sha256"))
    return {
        "bundle_mib": round(mib, 2),
        "verify_ms_per_mb": round(verify_ms, 3),
        "sha256_ms_per_mb": round(sha_ms, 3),
        "verify_over_sha256": round(verify_ms / sha_ms, 3),
        "verify_samples": [round(x, 3) for x in timed["verify"]],
        "sha256_samples": [round(x, 3) for x in timed["sha256"]],
    }


# -- start-up with require against off -------------------------------------------------


def _signed_bundles(root: Path, count: int) -> tuple[Path, Path]:
    """``count`` signed idle zip bundles in ``root/bundles``, and the authority's .pub."""
    keys = root / "keys"
    write_key_pair("platform", keys)
    vendor = Ed25519PrivateKey.generate()
    cert = issue_certificate(vendor.public_key(), read_private_key(keys / "platform.key"), ["*"])
    bundles = root / "bundles"
    for i in range(count):
        directory = write_bundle(root / "staging", f"idle-{i:02}")
        signature = sign_files(read_bundle(directory).files, vendor, cert)
        (directory / "META-INF").mkdir()
        (directory / SIGNATURE_FILE).write_bytes(signature)
        bundles.mkdir(exist_ok=True)
        shutil.make_archive(str(bundles / directory.name), "zip", directory)
    return bundles, keys / "platform.pub"


def _start_once(root: Path, bundles: Path, envs: Path, trust: str, count: int) -> float:
    """Seconds from drivebayd's exec until ``count`` drivers are RUNNING."""
    shutil.rmtree(root, ignore_errors=True)
    drivers = root / "drivers"
    shutil.copytree(bundles, drivers)
    config = root / "drivebay.yaml"
    config.write_text(
        f"state_dir: {root / 'state'}\ndrivers_dir: {drivers}\n"
        f"socket: {root / 'ctl.sock'}\nenvs_dir: {envs}\n{trust}"
    )
    argv = [str(BIN / "drivebayd"), "--config", str(config)]
    start = time.perf_counter()
    with (
        daemon_process(argv, root / "drivebayd.log") as process,
        asyncio.Runner() as runner,
    ):
        client = runner.run(_connect(root / "ctl.sock", process))
        try:

            def all_running() -> bool:
                rows = runner.run(client.request("status"))
                bad = [r for r in rows if r["state"] in ("INVALID", "FATAL", "FAILED")]
                if bad:
                    raise RuntimeError(f"{bad[0]['name']}: {bad[0]['message']}")
                return sum(r["state"] == "RUNNING" for r in rows) == count

            wait_until(all_running, 300, f"{count} drivers RUNNING", 0.02)
            return time.perf_counter() - start
        finally:
            runner.run(client.close())


def startup_figures(envs_dir: Path, count: int = 20, runs: int = 5) -> dict[str, Any]:
    """Medians (s) of drivebayd's start to ``count`` RUNNING, require and off."""
    with tempfile.TemporaryDirectory(prefix="drivebay-signing-") as scratch, reaping_orphans():
        root = Path(scratch)
        bundles, authority = _signed_bundles(root, count)
        trusts = {
            "off": "",
            "require": f"trust:\n  signatures: require\n  authorities: [{authority}]\n",
        }
        _common.progress("start-up: warming the environment store")
        _start_once(root / "run", bundles, envs_dir, trusts["require"], count)
        timed: dict[str, list[float]] = {"off": [], "require": []}
        for run in range(runs):
            order = ["off", "require"] if run % 2 == 0 else ["require", "off"]
            for mode in order:
                took = _start_once(root / "run", bundles, envs_dir, trusts[mode], count)
                timed[mode].append(took)
                _common.progress(f"start-up run {run + 1}/{runs} {mode}: {took:.3f} s")
    off, require = (statistics.median(timed[k]) for k in ("off", "require"))
    return {
        "bundles": count,
        "startup_off_s": round(off, 3),
        "startup_require_s": round(require, 3),
        "startup_require_over_off": round(require / off, 3),
        "startup_off_samples": [round(x, 3) for x in timed["off"]],
        "startup_require_samples": [round(x, 3) for x in timed["require"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = _common.bench_parser(__doc__.split("\n\n")[0], "a 4 MiB bundle, 3 start-up runs")
    options = parser.parse_args(argv)
    started = time.monotonic()
    result = {
        **verify_figures(4 if options.quick else 16),
        **startup_figures(options.envs_dir, runs=3 if options.quick else 5),
    }
    rows = [
        ["verify, ms/MiB", f"{result['verify_ms_per_mb']:.3f}", str(result["verify_samples"])],
        [
            "sha256 floor, ms/MiB",
            f"{result['sha256_ms_per_mb']:.3f}",
            str(result["sha256_samples"]),
        ],
        ["start-up off, s", f"{result['startup_off_s']:.3f}", str(result["startup_off_samples"])],
        [
            "start-up require, s",
            f"{result['startup_require_s']:.3f}",
            str(result["startup_require_samples"]),
        ],
    ]
    print(_common.format_table(["figure", "median", "runs"], rows))
    print(
        f"\nverify / sha256: {result['verify_over_sha256']:.2f} (target <= 1.5); "
        f"require / off at start-up: {result['startup_require_over_off']:.3f} (target < 1.10)"
    )
    info = _common.machine()
    print(
        f"{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_1m']}, {time.monotonic() - started:.0f} s"
    )
    if options.json:
        _common.print_json_last({**result, "machine": info})


if __name__ == "__main__":
    sys.exit(main())
