"""Chaos benchmark: drivebayd under attack, and what every caller saw.

Run with the project venv, from the repository root, after compiling the
project's bytecode::

    .venv/bin/python -m compileall -q kernel sandbox protocol
    .venv/bin/python scripts/bench/chaos.py [--quick] [--json]

Attacks, each against a real daemon, each on a driver of its own (the chaos
driver, ``fixtures/chaos/chaos.py``) with resources under load (calls with
a sequence number per resource; the driver writes a ledger line for every
operation it runs):

- ``kill_storm``: ``kill -9`` of the driver again and again (``--quick``: at
  least 50 kills under at least 50,000 calls);
- ``sigstop_driver``: SIGSTOP of the driver (its pings go unanswered);
- ``sigstop_spare``: SIGSTOP of the warm spare, then ``kill -9`` of the driver;
- ``hostile_driver``: output floods, memory, descriptor and process bombs,
  garbage on its channel, a CPU spin on its loop, a ``setsid`` grandchild;
- ``control_abuse``: garbage, huge length prefixes, incomplete 16 MiB frames,
  slow senders and 1,100 idle connections on the control socket;
- ``daemon_kill``: ``kill -9`` of the daemon mid-load, and a restart;
- ``disk_full``: the state dir a small tmpfs in a private mount namespace,
  filled, then read-only, then (as root) the database immutable.

The first six share one daemon (one attack after another); ``disk_full``
has its own. The daemons run with a soft descriptor limit of 1,024, fast
pings (0.5 s, 2 s timeout), ``restart.startsecs`` 0.1 and no crash-loop
limit that a storm would reach; everything else is default.

Per attack: calls accepted, answered OK, answered with each error type,
never answered (no answer within the call's deadline and 5 s), duplicated,
reordered and OK-but-not-executed (from the ledger), recovery (the signal
or hostile act to the driver RUNNING in another process, p50/p99/max),
``status`` p99 over a connection made before the attack (and how many went
unanswered for 5 s), the daemon's RSS and descriptors before and after, and
the processes of the attack's drivers left alive after the driver was
stopped. ``--json`` ends with one line: ``{"attacks": {NAME: {...}}}``.
Every process started here is stopped and reaped, also on Ctrl-C; the
script is the subreaper of the daemons' orphans.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _common
from _chaos_control import AbusePlan, control_abuse
from _chaos_crash import CrashPlan, daemon_kill, kill_storm, sigstop_driver, sigstop_spare
from _chaos_daemon import Chaosd, processes_left, reap_orphans
from _chaos_disk import LATE, DiskPlan, MountNamespace, disk_full, prepare
from _chaos_hostile import HostilePlan, hostile_driver
from _chaos_scene import LEFT_GRACE_S, Body, Figures, run_attack

PR_SET_CHILD_SUBREAPER = 36
JSON_KEYS = (
    "accepted",
    "ok",
    "errors",
    "never_answered",
    "duplicated",
    "reordered",
    "ok_not_executed",
    "recovery_ms_p50",
    "recovery_ms_p99",
    "status_ms_p99",
    "status_unanswered",
    "rss_kb_before",
    "rss_kb_after",
    "fds_before",
    "fds_after",
    "processes_left",
)


@dataclass(frozen=True)
class Plan:
    resources: int  # under load, per attack
    per_resource: int  # calls in flight per resource
    connections: int  # the load's, per attack
    crash: CrashPlan
    hostile: HostilePlan
    abuse: AbusePlan
    disk: DiskPlan


QUICK = Plan(
    resources=10,
    per_resource=3,
    connections=2,
    crash=CrashPlan(
        kills=50,
        storm_calls=50_000,
        storm_max_s=60,
        gap_s=0.15,
        spare_wait_s=1.0,
        warm_s=0.3,
        tail_s=0.3,
        stops=1,
    ),
    hostile=HostilePlan(flood_mb=16, bomb=50, spin_s=4.0, warm_s=0.3, tail_s=0.3),
    abuse=AbusePlan(
        garbage=10,
        huge_prefix=10,
        big_frames=20,
        slow=3,
        slow_byte_s=0.05,
        idle=1100,
        warm_s=0.3,
        tail_s=0.3,
    ),
    disk=DiskPlan(size_mb=32, changes=3, phase_s=0.5, late_wait_s=10, warm_s=0.3, tail_s=0.5),
)
FULL = Plan(
    resources=50,
    per_resource=3,
    connections=4,
    crash=CrashPlan(
        kills=250,
        storm_calls=1_000_000,
        storm_max_s=900,
        gap_s=0.3,
        spare_wait_s=2.0,
        warm_s=1.0,
        tail_s=1.0,
        stops=3,
    ),
    hostile=HostilePlan(flood_mb=128, bomb=200, spin_s=5.0, warm_s=1.0, tail_s=1.0),
    abuse=AbusePlan(
        garbage=50,
        huge_prefix=50,
        big_frames=20,
        slow=10,
        slow_byte_s=0.1,
        idle=1100,
        warm_s=1.0,
        tail_s=1.0,
    ),
    disk=DiskPlan(size_mb=32, changes=10, phase_s=2.0, late_wait_s=30, warm_s=1.0, tail_s=2.0),
)

SHARED = {  # attack -> its driver, on the shared daemon, in this order
    "kill_storm": "chaos-storm",
    "sigstop_driver": "chaos-stopped",
    "sigstop_spare": "chaos-spare",
    "hostile_driver": "chaos-hostile",
    "control_abuse": "chaos-abuse",
    "daemon_kill": "chaos-reboot",
}
ATTACKS = (*SHARED, "disk_full")
DISK_DRIVER = "chaos-disk"
HOSTILE_LIMITS = {"memory_mb": 256, "open_files": 256}


def daemon_settings() -> dict[str, Any]:
    return {
        "settle_s": 0.2,
        "restart": {"max_restarts": 1_000_000, "window_s": 60, "startsecs": 0.1},
        "timeouts": {
            "ping_interval_s": 0.5,
            "ping_timeout_s": 2,
            "drain_s": 2,
            "term_s": 2,
            "kill_s": 2,
        },
    }


def bodies(plan: Plan) -> dict[str, Body]:
    return {
        "kill_storm": functools.partial(kill_storm, plan=plan.crash),
        "sigstop_driver": functools.partial(sigstop_driver, plan=plan.crash),
        "sigstop_spare": functools.partial(sigstop_spare, plan=plan.crash),
        "hostile_driver": functools.partial(hostile_driver, plan=plan.hostile),
        "control_abuse": functools.partial(control_abuse, plan=plan.abuse),
        "daemon_kill": functools.partial(daemon_kill, plan=plan.crash),
    }


async def attack(
    daemon: Chaosd, name: str, driver: str, body: Body, plan: Plan, **kw: Any
) -> Figures:
    _common.progress(f"chaos: {name} ...")
    started = time.monotonic()
    figures = await run_attack(
        daemon, driver, body, plan.resources, plan.per_resource, plan.connections, **kw
    )
    _common.progress(f"chaos: {name} done in {time.monotonic() - started:.1f} s")
    return figures


async def shared_attacks(
    plan: Plan, root: Path, envs_dir: Path, mark: str, only: set[str]
) -> dict[str, Figures]:
    chosen = {name: body for name, body in bodies(plan).items() if name in only}
    daemon = Chaosd(root, envs_dir, mark, daemon_settings())
    for name in chosen:
        daemon.add_driver(SHARED[name], HOSTILE_LIMITS if name == "hostile_driver" else None)
    results: dict[str, Figures] = {}
    try:
        await daemon.start()
        for name in chosen:
            await daemon.wait_state(SHARED[name], "RUNNING")
        for name, body in chosen.items():
            results[name] = await attack(daemon, name, SHARED[name], body, plan)
    finally:
        await daemon.stop()
        await _count_left(daemon, results, {driver: name for name, driver in SHARED.items()})
    return results


async def disk_attack(plan: Plan, root: Path, envs_dir: Path, mark: str) -> Figures:
    settings = {**daemon_settings(), "logs": {"max_bytes": 1 << 20, "backups": 2}}
    daemon = Chaosd(root, envs_dir, mark, settings)
    ns = MountNamespace(daemon.state, plan.disk.size_mb)
    results: dict[str, Figures] = {}
    try:
        await ns.start()
        daemon.launcher = ns.enter
        daemon.add_driver(DISK_DRIVER)
        daemon.add_driver(LATE, drop=False)
        try:
            await daemon.start()
            await daemon.wait_state(DISK_DRIVER, "RUNNING")
            await prepare(daemon, DISK_DRIVER, plan.disk)
            body = functools.partial(disk_full, ns=ns, plan=plan.disk)
            results["disk_full"] = await attack(
                daemon, "disk_full", DISK_DRIVER, body, plan, op="say"
            )
        finally:
            await daemon.stop()
            await _count_left(daemon, results, {DISK_DRIVER: "disk_full", LATE: "disk_full"})
    finally:
        await ns.close()
    return results["disk_full"]


async def _count_left(daemon: Chaosd, results: dict[str, Figures], attacks: dict[str, str]) -> None:
    """After a daemon stopped: its drivers' processes still alive count for their
    attack (``attacks``: driver -> attack)."""
    left = await processes_left(set(daemon.markers), LEFT_GRACE_S)
    for mark in left.values():
        driver = daemon.markers[mark]
        figures = results.get(attacks[driver])
        if figures is not None:
            figures.processes_left = (figures.processes_left or 0) + 1
            figures.notes.append(f"a process of {driver} outlived the daemon's stop")
    reap_orphans(set())


async def run_all(plan: Plan, root: Path, envs_dir: Path, only: set[str]) -> dict[str, Figures]:
    mark = f"chaos{os.getpid()}x{time.monotonic_ns()}"
    results: dict[str, Figures] = {}
    if only & set(SHARED):
        results = await shared_attacks(plan, root / "shared", envs_dir, mark, only)
    if "disk_full" in only:
        results["disk_full"] = await disk_attack(plan, root / "disk", envs_dir, mark)
    return results


# -- report ------------------------------------------------------------------------------------


def _kb(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def attack_table(name: str, f: Figures) -> str:
    n = _common.number
    rows = [
        ["calls accepted", _kb(f.accepted)],
        ["answered OK", _kb(f.ok)],
        *[[f"answered {kind}", f"{count:,}"] for kind, count in (f.errors or {}).items()],
        ["never answered", _kb(f.never_answered)],
        ["duplicated", _kb(f.duplicated)],
        ["reordered", _kb(f.reordered)],
        ["OK but not executed", _kb(f.ok_not_executed)],
        [
            "recovery ms p50 / p99 / max",
            " / ".join(n(v) for v in (f.recovery_ms_p50, f.recovery_ms_p99, f.recovery_ms_max)),
        ],
        ["status ms p99 (unanswered)", f"{n(f.status_ms_p99)} ({f.status_unanswered})"],
        ["daemon RSS kB before -> after", f"{_kb(f.rss_kb_before)} -> {_kb(f.rss_kb_after)}"],
        ["daemon fds before -> after", f"{_kb(f.fds_before)} -> {_kb(f.fds_after)}"],
        ["processes left", _kb(f.processes_left)],
    ]
    table = _common.format_table([name, ""], rows)
    return "\n".join([table, *(f"  {note}" for note in f.notes)])


def summary_table(results: dict[str, Figures]) -> str:
    n = _common.number
    rows = []
    for name, f in results.items():
        errors = sum((f.errors or {}).values())
        rows.append(
            [
                name,
                _kb(f.accepted),
                _kb(errors),
                _kb(f.never_answered),
                f"{f.duplicated}/{f.reordered}/{f.ok_not_executed}",
                f"{n(f.recovery_ms_p50)}/{n(f.recovery_ms_p99)}/{n(f.recovery_ms_max)}",
                f"{n(f.status_ms_p99)} ({f.status_unanswered})",
                f"{_kb(f.rss_kb_before)}->{_kb(f.rss_kb_after)}",
                f"{_kb(f.fds_before)}->{_kb(f.fds_after)}",
                _kb(f.processes_left),
            ]
        )
    headers = [
        "attack",
        "calls",
        "errors",
        "unanswered",
        "dup/reord/OK-not-run",
        "recovery ms p50/p99/max",
        "status p99 ms",
        "RSS kB",
        "fds",
        "left",
    ]
    return _common.format_table(headers, rows)


def as_json(results: dict[str, Figures]) -> dict[str, Any]:
    return {
        "attacks": {name: {key: asdict(f)[key] for key in JSON_KEYS} for name, f in results.items()}
    }


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = _common.bench_parser(
        __doc__.split("\n\n")[0], "the short form: under 90 s, 50 kills under 50,000 calls"
    )
    parser.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help="a comma-separated subset of the attacks (default: all of them)",
    )
    options = parser.parse_args(argv)
    only = set(options.attacks.split(","))
    unknown = sorted(only - set(ATTACKS))
    if unknown:
        parser.error(f"unknown attack {unknown[0]!r}; known: {', '.join(ATTACKS)}")
    plan = QUICK if options.quick else FULL
    options.envs_dir.mkdir(parents=True, exist_ok=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,100 idle connections are ours
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    started = time.monotonic()
    load_before = _common.machine()["loadavg_1m"]
    with tempfile.TemporaryDirectory(prefix="drivebay-chaos-") as tmp:
        results = uvloop.run(run_all(plan, Path(tmp), options.envs_dir, only))
    info = _common.machine()
    for name, figures in results.items():
        print(attack_table(name, figures), end="\n\n")
    print(summary_table(results))
    print(
        f"\n{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, load "
        f"{load_before} before, {info['loadavg_1m']} after, "
        f"{'quick' if options.quick else 'full'} run, {time.monotonic() - started:.0f} s"
    )
    if options.json:
        _common.print_json_last(as_json(results))
    return 1 if any(f.aborted for f in results.values()) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every process is reaped by then; spare the traceback
        sys.exit(130)
