"""Several drivebayd nodes sharing resources through PostgreSQL: failover and throughput.

Run with the project venv, from the repository root::

    .venv/bin/python scripts/bench/cluster.py [--quick] [--json]

Everything runs on this host: a throw-away PostgreSQL (``tests/postgres.py``:
initdb into a temporary directory, a Unix socket only, as ``postgres`` when
we are root) and real ``drivebayd`` processes with the ledger driver of
``fixtures/cluster`` (each ``record`` call appends a line to one shared
file before it returns). Every process started here is stopped and reaped
by pid at the end, also on an error or Ctrl-C (``_cluster_nodes.Fleet``).

1. **Failover.** Three nodes (``cluster:`` with ``--lease-s``, ``renew_s``
   and ``grace_s``: 15 / 5 / 5 by default, 3 / 1 / 1 with ``--quick``) and
   1,000 resources put in the cluster's tables with
   ``kernel/cluster/repository.py``. Once each node owns a third, the
   node of the round (in turn) is ``kill -9``'d: *failover* is the time
   from the kill to every resource being owned again by a live node under
   a lease not ended, by the bench's monotonic clock, polling the
   ownership rows every 20 ms. Every resource of the dead node must come
   back under a greater epoch. The node is restarted and the next round
   waits until the three own a third each again. 5 rounds; the target is
   ``lease_s + grace_s + 2 s`` for each (the worst is judged). Each kill
   comes a random time (0 to ``renew_s``, seeded) after the nodes are
   balanced, so that it falls anywhere in the victim's renewal cycle: from
   the kill, its leases end within ``lease_s`` and the others claim them at
   their next round, within ``renew_s`` more.
   The load below runs through the nodes during the 5 failovers (callers
   of a dead node move to another node; ``--idle-failover``: no load), and
   the ledger gives lost / duplicated / reordered operations over them.
2. **Throughput.** Callers (each one call in flight, each over its own
   share of the resources, so a resource has one call at a time and its
   calls are made in sequence order) call ``record`` through:
   a single node without ``cluster:`` (resources in SQLite, added with
   ``resource-add``); one node with ``cluster:``; three nodes, the callers
   spread over them (each call accepted by some node and run by the
   owner). ``--callers`` (100) callers through ``cluster:`` nodes (their
   CPU per call grows with the calls in flight, so many more callers give
   fewer calls/s), ``--sqlite-callers`` (300) through the node without,
   which needs more to saturate. After a warm-up, 3 windows of 5 s (2 of
   2 s with ``--quick``): calls/s is the median of the windows, p50/p99 of
   every call answered in them; CPU µs per call of each drivebayd, of the
   processes below it (its drivers) and of PostgreSQL (the server and its
   backends) from ``/proc/PID/stat`` over the windows;
   PostgreSQL transactions per call from ``pg_stat_database``
   (``xact_commit + xact_rollback``, read after the load and 11 s of
   quiet so every backend has reported, background rounds included: a
   listening backend reports its wake-ups when it next runs a statement,
   its LISTEN again after ``renew_s`` with nothing heard) and
   write transactions per call (transaction ids handed out: exact).
   The ledger of each setup gives lost / duplicated / reordered too.

Targets (issue 16): failover under lease + grace + 2 s; three nodes
>= 0.9x one node's calls/s; 0 lost and duplicated.

``--json``: one object on the last line of stdout; keys ``failover_s``
(worst of the rounds), ``failovers_s``, ``failover_median_s``,
``lease_s``, ``renew_s``, ``grace_s``, ``failover_target_s``, ``lost``,
``duplicated``,
``reordered`` (over the failovers under load; null when not measured),
``one_node_calls_per_s``, ``three_node_calls_per_s``,
``single_node_sqlite_calls_per_s`` (null when a setup could not call),
``setups`` (per setup: calls/s, p50_ms, p99_ms, cpu_us_per_call per node,
below_cpu_us_per_call (its drivers), postgres_cpu_us_per_call,
pg_xacts_per_call, pg_write_xacts_per_call, ledger), ``ratios``
(``three_over_one``, ``one_over_sqlite``), ``under_load`` (the
failovers' ledger: made, answered OK, errors by type, runs the driver's
``reconcile_operation`` made), ``callers``, ``sqlite_callers``,
``machine``, ``commit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _cluster_load as load_
import _cluster_nodes as nodes_
import _common
import psycopg

from drivebay.kernel.cluster.repository import ClusterRepository
from drivebay.kernel.cluster.schema import migrate
from drivebay.kernel.resources.store import Resource

RESOURCES = 1000
FAILOVERS = 5
POLL_S = 0.02  # ownership polled this often: small against the failover figure
QUIET_S = 11.0  # PostgreSQL's backends report their counts within 10 s of going idle


@dataclass(frozen=True)
class Plan:
    timings: nodes_.Timings
    callers: int  # calls in flight through cluster: nodes
    warmup_s: float
    window_s: float
    rounds: int
    sqlite_callers: int = 300  # through the node without cluster: (it takes more to saturate)
    resources: int = RESOURCES
    failovers: int = FAILOVERS


FULL = Plan(nodes_.Timings(15.0, 5.0, 5.0), callers=100, warmup_s=2.0, window_s=5.0, rounds=3)
QUICK = Plan(nodes_.Timings(3.0, 1.0, 1.0), callers=100, warmup_s=1.0, window_s=2.0, rounds=2)


def resource_ids(count: int) -> list[str]:
    return [f"r{n:04d}" for n in range(count)]


# -- failover ---------------------------------------------------------------------------


@dataclass
class Failover:
    victim: str
    held: int  # resources it owned when killed
    seconds: float  # kill -> every resource owned by a live node
    moved_to_greater_epoch: int  # of the victim's resources
    leftovers_killed: int  # processes below the victim that outlived it by 5 s
    rebalance_s: float  # restart -> a third each again


async def add_to_cluster(db: psycopg.AsyncConnection[Any], ids: list[str]) -> None:
    """The resources, straight into the cluster's tables (after migrating, as a node would)."""
    await migrate(db)
    repository = ClusterRepository(db, "bench", 15.0)
    for resource in ids:
        await repository.add_resource(Resource(resource, nodes_.DRIVER))


async def until(what: str, deadline_s: float, check: Any) -> float:
    """Poll ``check()`` every POLL_S until true; the time it took. Raises past the deadline."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > deadline_s:
            raise RuntimeError(f"{what}: not reached within {deadline_s:g} s")
        await asyncio.sleep(POLL_S)
    return time.monotonic() - start


def balanced(db: psycopg.AsyncConnection[Any], live: list[str], total: int) -> Any:
    async def check() -> bool:
        held = await nodes_.owners(db)
        return held.get("", 0) == 0 and all(held.get(n, 0) >= total // len(live) - 2 for n in live)

    return check


async def failovers(fleet: nodes_.Fleet, plan: Plan, nodes: list[nodes_.Node]) -> list[Failover]:
    """``plan.failovers`` rounds of kill -9, takeover, restart (any load runs meanwhile)."""
    t = plan.timings
    db = await fleet.admin()
    try:
        names = [node.name for node in nodes]
        settle_s = 10 * t.lease_s + 60
        await until("the nodes own a third each", settle_s, balanced(db, names, plan.resources))
        done: list[Failover] = []
        phase = random.Random(16)
        for number in range(plan.failovers):
            victim = nodes[number % len(nodes)]
            # The kill falls anywhere in the victim's renewal cycle, not just after a round.
            await asyncio.sleep(phase.uniform(0, t.renew_s))
            before = await nodes_.epochs(db)
            mine = {r: e for r, (o, e) in before.items() if o == victim.name}
            _common.progress(
                f"cluster: failover {number + 1}/{plan.failovers}: kill -9 {victim.name} "
                f"({len(mine)} resources)"
            )

            async def taken_over() -> bool:
                held = await nodes_.owners(db)
                return held.get("", 0) == 0 and victim.name not in held  # noqa: B023

            victim.kill9()
            seconds = await until("takeover", 3 * t.lease_s + 30, taken_over)
            leftovers = await victim.reap()
            after = await nodes_.epochs(db)
            greater = sum(
                1 for r, e in mine.items() if after[r][1] > e and after[r][0] != victim.name
            )
            await victim.start()
            rebalance_s = await until(
                "rebalanced after the restart", settle_s, balanced(db, names, plan.resources)
            )
            done.append(Failover(victim.name, len(mine), seconds, greater, leftovers, rebalance_s))
            _common.progress(f"cluster:   all owned again after {seconds:.2f} s")
        return done
    finally:
        await db.close()


# -- throughput -------------------------------------------------------------------------


@dataclass
class Setup:
    label: str
    key: str
    calls_per_s: float | None = None
    per_window: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None
    calls: int = 0
    cpu_us_per_call: dict[str, float] = field(default_factory=dict)  # drivebayd of each node
    below_cpu_us_per_call: dict[str, float] = field(default_factory=dict)  # its drivers etc.
    postgres_cpu_us_per_call: float | None = None  # the server and its backends
    pg_xacts_per_call: float | None = None
    pg_write_xacts_per_call: float | None = None
    ledger: dict[str, Any] = field(default_factory=dict)
    error: str = ""


async def measure(
    setup: Setup,
    plan: Plan,
    nodes: list[nodes_.Node],
    resources: list[str],
    ledger: Path,
    fleet: nodes_.Fleet | None,
) -> None:
    """Warm-up, then ``plan.rounds`` windows of the load through ``nodes``."""
    gateway = load_.Gateway(nodes)
    callers = plan.callers if fleet is not None else plan.sqlite_callers
    load = load_.Load(gateway, resources, callers)
    db = await fleet.admin() if fleet is not None else None
    samples: list[tuple[int, float]] = []
    latencies: list[float] = []
    cpu = dict.fromkeys((n.name for n in nodes), 0.0)
    below = dict.fromkeys((n.name for n in nodes), 0.0)
    server = fleet.postgres.server if fleet is not None and fleet.postgres is not None else None
    pg_cpu = 0.0
    try:
        xacts_before = await nodes_.transactions(db) if db is not None else (0, 0)
        async with asyncio.TaskGroup() as group:
            runner = group.create_task(load.run())
            await asyncio.sleep(plan.warmup_s)
            for _ in range(plan.rounds):
                trees = {n.name: nodes_.tree_cpu(n.pid) for n in nodes}
                pg_before = nodes_.tree_cpu(server.pid) if server is not None else {}
                start = time.perf_counter()
                await asyncio.sleep(plan.window_s)
                end = time.perf_counter()
                pg_after = nodes_.tree_cpu(server.pid) if server is not None else {}
                for n in nodes:
                    after = nodes_.tree_cpu(n.pid)
                    cpu[n.name] += after[n.pid] - trees[n.name][n.pid]
                    below[n.name] += nodes_.spent(trees[n.name], after) - (
                        after[n.pid] - trees[n.name][n.pid]
                    )
                pg_cpu += nodes_.spent(pg_before, pg_after)
                calls, window = load.window(start, end)
                samples.append((calls, end - start))
                latencies += window
                if runner.done():
                    break
            load.stop.set()
        if db is not None:
            await asyncio.sleep(QUIET_S)
            xacts_after = await nodes_.transactions(db)
            made = len(load.issued.resources)
            if made:
                setup.pg_xacts_per_call = (xacts_after[0] - xacts_before[0]) / made
                setup.pg_write_xacts_per_call = (xacts_after[1] - xacts_before[1] - 1) / made
    finally:
        await gateway.close()
        if db is not None:
            await db.close()
    checked = load_.check(ledger, load.issued)
    setup.ledger = dataclasses.asdict(checked)
    answered = sum(c for c, _ in samples)
    if not answered:
        setup.error = "; ".join(checked.first_failures) or "no call answered"
        return
    latencies.sort()
    setup.per_window = [c / s for c, s in samples]
    setup.calls_per_s = statistics.median(setup.per_window)
    setup.p50_ms = _common.percentile(latencies, 50) * 1e3
    setup.p99_ms = _common.percentile(latencies, 99) * 1e3
    setup.calls = answered
    setup.cpu_us_per_call = {name: s / answered * 1e6 for name, s in cpu.items()}
    setup.below_cpu_us_per_call = {name: s / answered * 1e6 for name, s in below.items()}
    if server is not None:
        setup.postgres_cpu_us_per_call = pg_cpu / answered * 1e6


async def sqlite_setup(plan: Plan, root: Path, envs_dir: Path) -> Setup:
    setup = Setup("one node, no cluster: (SQLite)", "single_node_sqlite")
    fleet = nodes_.Fleet(root / "sqlite", envs_dir, plan.timings)  # no PostgreSQL started
    ledger = root / "sqlite-ledger.txt"
    node = fleet.node("alone", clustered=False, ledger=ledger)
    try:
        await node.start()
        resources = resource_ids(plan.resources)
        client = await node.connect()
        try:
            slots = asyncio.Semaphore(100)

            async def add(resource: str) -> None:
                async with slots:
                    args = {"id": resource, "driver": nodes_.DRIVER, "assignments": []}
                    await client.request("resource-add", args)

            async with asyncio.TaskGroup() as group:
                for resource in resources:
                    group.create_task(add(resource))
        finally:
            await client.close()
        _common.progress(f"cluster: throughput, {setup.label} ...")
        await measure(setup, plan, [node], resources, ledger, None)
    finally:
        await fleet.stop_nodes()
    return setup


async def cluster_setup(
    fleet: nodes_.Fleet, plan: Plan, count: int, key: str, label: str
) -> tuple[Setup, list[nodes_.Node]]:
    """``count`` nodes of a fresh database, the resources spread over them, measured."""
    setup = Setup(label, key)
    await fleet.use_database(key)
    ledger = fleet.root / f"{key}-ledger.txt"
    names = [f"{key}-{chr(ord('a') + n)}" for n in range(count)]
    nodes = [fleet.node(name, clustered=True, ledger=ledger) for name in names]
    await asyncio.gather(*(n.start() for n in nodes))
    resources = resource_ids(plan.resources)
    db = await fleet.admin()
    try:
        await add_to_cluster(db, resources)
        await until(
            "the resources owned",
            10 * plan.timings.lease_s + 60,
            balanced(db, names, len(resources)),
        )
    finally:
        await db.close()
    _common.progress(f"cluster: throughput, {label} ...")
    await measure(setup, plan, nodes, resources, ledger, fleet)
    return setup, nodes


# -- the whole run ----------------------------------------------------------------------


@dataclass
class Results:
    plan: Plan
    failovers: list[Failover]
    under_load: dict[str, Any] | None
    setups: list[Setup]
    wall_s: float


async def run(plan: Plan, envs_dir: Path, under_load: bool, only: str) -> Results:
    began = time.monotonic()
    setups: list[Setup] = []
    done: list[Failover] = []
    loaded: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="drivebay-bench-cluster-") as tmp:
        root = Path(tmp)
        if only != "failover":
            setups.append(await sqlite_setup(plan, root, envs_dir))
        async with nodes_.Fleet.started(root / "pg", envs_dir, plan.timings) as fleet:
            if only != "failover":
                for count, key, label in (
                    (1, "one_node", "one node, cluster:"),
                    (3, "three_node", "three nodes, cluster:"),
                ):
                    setup, _ = await cluster_setup(fleet, plan, count, key, label)
                    setups.append(setup)
                    await fleet.stop_nodes()
            if only != "throughput":
                done, loaded = await failover_phase(fleet, plan, root, under_load)
    return Results(plan, done, loaded, setups, time.monotonic() - began)


async def failover_phase(
    fleet: nodes_.Fleet, plan: Plan, root: Path, under_load: bool
) -> tuple[list[Failover], dict[str, Any] | None]:
    """Three nodes of a fresh database and the failovers, under the load or not."""
    await fleet.use_database("failover")
    ledger = root / "failover-ledger.txt"
    nodes = [fleet.node(f"node-{c}", clustered=True, ledger=ledger) for c in "abc"]
    await asyncio.gather(*(n.start() for n in nodes))
    resources = resource_ids(plan.resources)
    db = await fleet.admin()
    try:
        await add_to_cluster(db, resources)
    finally:
        await db.close()
    if not under_load:
        return await failovers(fleet, plan, nodes), None
    gateway = load_.Gateway(nodes)
    load = load_.Load(gateway, resources, plan.callers)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(load.run())
            try:
                done = await failovers(fleet, plan, nodes)
            finally:
                load.stop.set()
    finally:
        await gateway.close()
    return done, dataclasses.asdict(load_.check(ledger, load.issued))


# -- reporting --------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def rates(r: Results) -> dict[str, float | None]:
    """Calls/s of each setup by key (None: not run, or no call answered)."""
    found: dict[str, float | None] = dict.fromkeys(("single_node_sqlite", "one_node", "three_node"))
    found |= {s.key: s.calls_per_s for s in r.setups}
    return found


def failover_table(r: Results) -> list[str]:
    t = r.plan.timings
    return [
        f"Failover: 3 nodes, {r.plan.resources:,} resources, lease_s {t.lease_s:g}, "
        f"renew_s {t.renew_s:g}, grace_s {t.grace_s:g}; kill -9 -> all owned again",
        _common.format_table(
            ["round", "victim", "held", "failover s", "to greater epoch", "rebalanced s"],
            [
                [
                    str(i + 1),
                    f.victim,
                    str(f.held),
                    f"{f.seconds:.2f}",
                    str(f.moved_to_greater_epoch),
                    f"{f.rebalance_s:.1f}",
                ]
                for i, f in enumerate(r.failovers)
            ],
        ),
        "",
    ]


def throughput_table(r: Results) -> list[str]:
    n = _common.number
    rows = []
    for s in r.setups:
        ledger = s.ledger
        rows.append(
            [
                s.label,
                n(s.calls_per_s),
                n(s.p50_ms),
                n(s.p99_ms),
                " / ".join(n(v) for v in s.cpu_us_per_call.values()) or "-",
                " / ".join(n(v) for v in s.below_cpu_us_per_call.values()) or "-",
                n(s.postgres_cpu_us_per_call),
                n(s.pg_xacts_per_call),
                n(s.pg_write_xacts_per_call),
                f"{ledger.get('lost', '-')} / {ledger.get('duplicated', '-')} / "
                f"{ledger.get('reordered', '-')}",
            ]
        )
    lines = [
        f"Throughput: {r.plan.callers} callers ({r.plan.sqlite_callers} without cluster:) over "
        f"{r.plan.resources:,} resources, one call in flight per resource, {r.plan.rounds} "
        f"windows of {r.plan.window_s:g} s",
        _common.format_table(
            [
                "setup",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "CPU µs/call: drivebayd",
                "its drivers",
                "PostgreSQL",
                "PG xacts/call",
                "PG writes/call",
                "lost / dup / reord",
            ],
            rows,
        ),
    ]
    lines += [f"{s.label}: no call answered: {s.error}" for s in r.setups if s.error]
    return [*lines, ""]


def report(r: Results) -> str:
    n = _common.number
    t = r.plan.timings
    target = t.lease_s + t.grace_s + 2
    lines = (failover_table(r) if r.failovers else []) + (throughput_table(r) if r.setups else [])
    rate = rates(r)
    three_one = ratio(rate["three_node"], rate["one_node"])
    one_sqlite = ratio(rate["one_node"], rate["single_node_sqlite"])
    worst = max((f.seconds for f in r.failovers), default=None)
    lost = r.under_load
    verdicts = [
        [
            f"failover < lease + grace + 2 = {target:g} s",
            "-" if worst is None else f"worst {worst:.2f} s",
            "-" if worst is None else ("met" if worst < target else "NOT met"),
        ],
        [
            "three nodes / one node >= 0.9",
            n(three_one),
            "-" if three_one is None else ("met" if three_one >= 0.9 else "NOT met"),
        ],
        ["one node (cluster:) / SQLite", n(one_sqlite), "the price of durability"],
        [
            "lost / duplicated over the failovers under load",
            "-"
            if lost is None
            else f"{lost['lost']} / {lost['duplicated']} (reordered {lost['reordered']}, "
            f"of {lost['made']:,} made, {lost['answered_ok']:,} answered OK, "
            f"{lost['reconciled']} run by reconcile_operation)",
            "not measured"
            if lost is None
            else ("met" if lost["lost"] == lost["duplicated"] == 0 else "NOT met"),
        ],
    ]
    lines.append(_common.format_table(["target", "value", "verdict"], verdicts))
    return "\n".join(lines)


def as_json(r: Results) -> dict[str, Any]:
    rate = rates(r)
    t = r.plan.timings
    lost = r.under_load or {}
    return {
        "failover_s": max((f.seconds for f in r.failovers), default=None),
        "failovers_s": [round(f.seconds, 3) for f in r.failovers],
        "failover_median_s": (
            statistics.median(f.seconds for f in r.failovers) if r.failovers else None
        ),
        "failovers": [dataclasses.asdict(f) for f in r.failovers],
        "failover_target_s": t.lease_s + t.grace_s + 2,
        "lease_s": t.lease_s,
        "renew_s": t.renew_s,
        "grace_s": t.grace_s,
        "resources": r.plan.resources,
        "lost": lost.get("lost"),
        "duplicated": lost.get("duplicated"),
        "reordered": lost.get("reordered"),
        "under_load": r.under_load,
        "one_node_calls_per_s": rate["one_node"],
        "three_node_calls_per_s": rate["three_node"],
        "single_node_sqlite_calls_per_s": rate["single_node_sqlite"],
        "ratios": {
            "three_over_one": ratio(rate["three_node"], rate["one_node"]),
            "one_over_sqlite": ratio(rate["one_node"], rate["single_node_sqlite"]),
        },
        "setups": {s.key: dataclasses.asdict(s) for s in r.setups},
        "callers": r.plan.callers,
        "sqlite_callers": r.plan.sqlite_callers,
        "wall_s": round(r.wall_s, 1),
        "machine": _common.machine(),
        "commit": _commit(),
    }


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=nodes_.ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return ""


async def stoppable(work: Coroutine[Any, Any, Results]) -> Results:
    """``work``, cancelled by a SIGTERM (Ctrl-C already is, by asyncio), so
    that it ends every process it started on the way out."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main() -> None:
    parser = _common.bench_parser(
        __doc__.splitlines()[0], "short leases (3/1/1 s), fewer callers and windows"
    )
    parser.add_argument("--lease-s", type=float, help="lease_s (renew_s and grace_s: a third)")
    parser.add_argument(
        "--callers", type=int, help="calls in flight through cluster: nodes (one per resource)"
    )
    parser.add_argument(
        "--sqlite-callers", type=int, help="calls in flight through the node without cluster:"
    )
    parser.add_argument(
        "--idle-failover",
        action="store_true",
        help="fail over without the load (no lost / duplicated / reordered figures)",
    )
    parser.add_argument(
        "--only", choices=("failover", "throughput"), help="run one part of the benchmark"
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.lease_s:
        third = args.lease_s / 3
        plan = dataclasses.replace(plan, timings=nodes_.Timings(args.lease_s, third, third))
    if args.callers:
        plan = dataclasses.replace(plan, callers=args.callers)
    if args.sqlite_callers:
        plan = dataclasses.replace(plan, sqlite_callers=args.sqlite_callers)
    try:
        results = asyncio.run(
            stoppable(run(plan, args.envs_dir, not args.idle_failover, args.only))
        )
    except asyncio.CancelledError:
        _common.progress("cluster: stopped by SIGTERM; every process it started has ended")
        raise SystemExit(128 + signal.SIGTERM) from None
    print(report(results))
    if args.json:
        _common.print_json_last(as_json(results))


if __name__ == "__main__":
    main()
