"""The processes of ``cluster.py``: a throw-away PostgreSQL and real drivebayd nodes.

``Fleet`` owns everything started here: the PostgreSQL server
(``tests/postgres.py``'s ``ThrowawayPostgres``: initdb into a temporary
directory, a Unix socket only, as the ``postgres`` user when we are root)
and each ``drivebayd`` (the ledger driver of ``fixtures/cluster``, with or
without ``cluster:``). Leaving the fleet stops every daemon still running
(SIGTERM, SIGKILL past a deadline, reaped), then kills by pid any process
that was below a daemon and outlived it (each checked by its start time,
so a reused pid is left alone), then stops PostgreSQL: also on an error or
Ctrl-C.

Also here: the CPU time of a process from ``/proc/PID/stat``, the
processes below a daemon, and the ownership rows as the database sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
import psycopg

from drivebay.client import AsyncClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests/postgres.py: the throw-away server the tests use

from tests.postgres import ThrowawayPostgres  # noqa: E402

BIN = Path(sys.executable).parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cluster" / "ledger.py"
DRIVER = "ledger"
VERSION = "1.0.0"
STOP_S = 30.0
POLL_S = 0.02
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Timings:
    """The ``cluster:`` timings of every node."""

    lease_s: float
    renew_s: float
    grace_s: float


# -- processes --------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 once it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S


def started_at(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot; None when there is none."""
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> dict[int, int]:
    """Every process below ``pid`` now, pid -> start time."""
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    pids = [int(p) for p in children.read().split()]
            except OSError:
                continue
            for child in pids:
                start = started_at(child)
                if start is not None and child not in found:
                    found[child] = start
                    todo.append(child)
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of ``pid`` and of every process below it, by pid."""
    return {p: cpu_seconds(p) for p in (pid, *descendants(pid))}


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds a tree spent between two ``tree_cpu`` readings (a process
    that came meanwhile counts from 0; one that ended, not at all)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def kill_leftovers(processes: dict[int, int], deadline_s: float) -> int:
    """Wait up to ``deadline_s`` for ``processes`` (pid -> start time) to
    end, then SIGKILL those still there (the same start time: the same
    process); returns how many had to be killed."""
    end = time.monotonic() + deadline_s
    alive = dict(processes)
    while alive and time.monotonic() < end:
        alive = {pid: start for pid, start in alive.items() if started_at(pid) == start}
        if alive:
            time.sleep(POLL_S)
    killed = 0
    for pid, start in alive.items():
        if started_at(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


# -- a node -----------------------------------------------------------------------------


def _write_bundle(root: Path) -> None:
    """The ledger bundle, written beside the drivers dir and moved in at once."""
    bundle = root / "staging" / f"{DRIVER}-{VERSION}"
    (bundle / "src").mkdir(parents=True)
    (bundle / "driver.yaml").write_text(
        f"name: {DRIVER}\nversion: {VERSION}\ncategory: storage\n"
        "description: the ledger driver of the cluster benchmark\n"
        "entrypoint: ledger:ClusterLedger\n"
    )
    (bundle / "LICENSE").write_text("Apache-2.0\n")
    (bundle / "src" / "ledger.py").write_text(FIXTURE.read_text())
    (root / "drivers").mkdir(parents=True, exist_ok=True)
    os.rename(bundle, root / "drivers" / bundle.name)


@dataclass
class Node:
    """One drivebayd in ``root``; ``cluster`` is its ``cluster:`` section (None: SQLite alone)."""

    name: str
    root: Path
    envs_dir: Path
    ledger: Path
    cluster: dict[str, Any] | None
    process: asyncio.subprocess.Process | None = None
    below: dict[int, int] = field(default_factory=dict)  # pid -> start time, seen below it
    killed: bool = False  # by kill9, until started again

    @property
    def socket(self) -> str:
        return str(self.root / "ctl.sock")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None and not self.killed

    def write(self) -> Path:
        """The node's config and drivers dir (once)."""
        config = self.root / "drivebay.yaml"
        if config.exists():
            return config
        self.root.mkdir(parents=True)
        settings: dict[str, Any] = {
            "state_dir": str(self.root / "state"),
            "drivers_dir": str(self.root / "drivers"),
            "socket": self.socket,
            "envs_dir": str(self.envs_dir),
            "settle_s": 0.2,
            "drivers": {
                DRIVER: {"env": {"LEDGER_PATH": str(self.ledger), "LEDGER_NODE": self.name}}
            },
        }
        if self.cluster is not None:
            settings["cluster"] = self.cluster
        config.write_text(json.dumps(settings))  # JSON is YAML
        _write_bundle(self.root)
        return config

    async def start(self) -> None:
        """Start drivebayd and wait until the ledger driver is RUNNING."""
        config = self.write()
        self.killed = False
        log_fd = os.open(self.root / "drivebayd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            self.process = await asyncio.create_subprocess_exec(
                str(BIN / "drivebayd"),
                "--config",
                str(config),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,  # a Ctrl-C reaches only us; the fleet stops it
            )
        finally:
            os.close(log_fd)
        client = await self.connect()
        try:
            async with asyncio.timeout(120):
                while True:
                    rows = [r for r in await client.request("status") if r["name"] == DRIVER]
                    if [r["state"] for r in rows] == ["RUNNING"]:
                        break
                    await asyncio.sleep(POLL_S * 5)
        finally:
            await client.close()
        self.below = descendants(self.pid)

    async def connect(self) -> AsyncClient:
        """A new control connection; retried while the socket is not there yet."""
        async with asyncio.timeout(60):
            while True:
                if not self.running:
                    raise RuntimeError(f"drivebayd {self.name} exited; see {self.root}")
                try:
                    return await AsyncClient.connect(self.socket)
                except OSError:
                    await asyncio.sleep(POLL_S)

    def kill9(self) -> None:
        """``kill -9`` of drivebayd alone (what was below it ends by itself,
        or ``reap`` kills it)."""
        self.below |= descendants(self.pid)
        self.killed = True  # callers route around it from now on
        os.kill(self.pid, signal.SIGKILL)

    async def reap(self) -> int:
        """After ``kill9``: reap drivebayd, and kill what was below it and
        outlived it by 5 s; returns how many such processes were killed."""
        assert self.process is not None
        await self.process.wait()
        below, self.below = self.below, {}
        return await asyncio.to_thread(kill_leftovers, below, 5.0)

    async def stop(self) -> None:
        """SIGTERM, SIGKILL past STOP_S; reaped; leftovers below it killed."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.below |= descendants(self.process.pid)
        await _common.stop_process(self.process, STOP_S)
        await self.reap()

    def cpu(self) -> float:
        return cpu_seconds(self.pid) if self.running else 0.0


# -- the fleet --------------------------------------------------------------------------


class Fleet:
    """PostgreSQL and the nodes; ``async with Fleet.started(...)`` ends them all."""

    def __init__(self, root: Path, envs_dir: Path, timings: Timings) -> None:
        self.root = root
        self.envs_dir = envs_dir
        self.timings = timings
        self.postgres: ThrowawayPostgres | None = None
        self.nodes: list[Node] = []
        self.dbname = ""
        self.database = ""  # the URL the nodes' cluster: names

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls, root: Path, envs_dir: Path, timings: Timings) -> AsyncIterator[Fleet]:
        fleet = cls(root, envs_dir, timings)
        try:
            await asyncio.to_thread(fleet._start_postgres)
            yield fleet
        finally:
            await fleet.close()

    def _start_postgres(self) -> None:
        self.postgres = ThrowawayPostgres()
        self.postgres.start()

    async def use_database(self, name: str) -> None:
        """A new, empty database ``name``: the nodes made from now on use it."""
        assert self.postgres is not None
        async with await psycopg.AsyncConnection.connect(
            self.postgres.conninfo(), autocommit=True
        ) as admin:
            await admin.execute(f'CREATE DATABASE "{name}"')
        self.dbname, self.database = name, self.postgres.url(name)

    def node(self, name: str, clustered: bool, ledger: Path) -> Node:
        """A node (not started) of this fleet."""
        cluster = None
        if clustered:
            t = self.timings
            cluster = {
                "database": self.database,
                "node_id": name,
                "lease_s": t.lease_s,
                "renew_s": t.renew_s,
                "grace_s": t.grace_s,
            }
        made = Node(name, self.root / name, self.envs_dir, ledger, cluster)
        self.nodes.append(made)
        return made

    async def stop_nodes(self) -> None:
        """Stop every node of the fleet still running, at once."""
        try:
            async with asyncio.TaskGroup() as group:
                for node in self.nodes:
                    group.create_task(node.stop())
        finally:
            self.nodes = []

    async def close(self) -> None:
        try:
            await asyncio.shield(self.stop_nodes())
        finally:
            if self.postgres is not None:
                await asyncio.shield(asyncio.to_thread(self.postgres.stop))

    async def admin(self) -> psycopg.AsyncConnection[Any]:
        """A connection of the bench's own to the cluster's database."""
        assert self.postgres is not None
        return await psycopg.AsyncConnection.connect(
            self.postgres.conninfo(self.dbname), autocommit=True
        )


# -- what the database says --------------------------------------------------------------


async def owners(db: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """Node -> resources it holds under a lease not ended ("" for the rest)."""
    cursor = await db.execute(
        "SELECT CASE WHEN owner_node IS NOT NULL AND lease_until > now() THEN owner_node"
        " ELSE '' END, count(*) FROM drivebay.ownership GROUP BY 1"
    )
    return {str(node): int(n) for node, n in await cursor.fetchall()}


async def epochs(db: psycopg.AsyncConnection[Any]) -> dict[str, tuple[str | None, int]]:
    """Resource -> (owner, epoch)."""
    cursor = await db.execute("SELECT resource_id, owner_node, epoch FROM drivebay.ownership")
    return {str(r): (o, int(e or 0)) for r, o, e in await cursor.fetchall()}


async def transactions(db: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """(commits + rollbacks of the database as pg_stat_database shows them
    now, transaction ids handed out so far: write transactions, exact)."""
    await db.execute("SELECT pg_stat_clear_snapshot()")
    cursor = await db.execute(
        "SELECT xact_commit + xact_rollback, pg_current_xact_id()::text::bigint"
        " FROM pg_stat_database WHERE datname = current_database()"
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
