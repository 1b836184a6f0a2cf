"""Real ``drivebayd`` nodes sharing the test's PostgreSQL, and what a test
reads and writes in the cluster's tables beside them (tests/cluster/)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

from drivebay.client import AsyncClient, OperationError
from drivebay.kernel.resources.store import Resource
from tests.cluster.helpers import cluster
from tests.cluster.ledger_cluster import driver_config, ledger_bundle
from tests.e2e.harness import Daemon, wait_for
from tests.e2e.test_resources import misbehave_bundle
from tests.helpers import run

# Short leases: a node fences 1.5 s after its last renewal, others claim after 2 s.
TIMINGS: dict[str, float] = {"lease_s": 2.0, "renew_s": 0.5, "grace_s": 0.5}


def clustered(
    daemon_factory: Any,
    database: str,
    node_id: str,
    staging: Path,
    timings: dict[str, float] = TIMINGS,
    ledger: Path | None = None,
) -> Daemon:
    """A daemon with ``cluster:`` (not started yet) running the driver ``mis``,
    or with ``ledger`` the driver ``cled`` writing to it (ledger_cluster)."""
    config: dict[str, Any] = {"cluster": {"database": database, "node_id": node_id, **timings}}
    if ledger is not None:
        config |= driver_config(ledger, node_id)
    made: Daemon = daemon_factory(node_id, config)
    staging.mkdir(exist_ok=True)
    made.drop(misbehave_bundle(staging) if ledger is None else ledger_bundle(staging))
    return made


class CallLoad:
    """Callers on a thread of their own: one call after another on each
    resource (``record``, through the daemons' sockets in turn) until ``stop``."""

    def __init__(
        self,
        sockets: list[Path],
        resources: list[str],
        timeout: float = 30,
        errors: list[str] | None = None,
    ) -> None:
        self.answers: list[dict[str, Any]] = []
        self.errors: list[str] = [] if errors is None else errors  # calls answered with one
        self._sockets = sockets
        self._resources = resources
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load")

    def start(self) -> CallLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop calling; returns once every call made has its answer."""
        self._stop.set()
        self._thread.join(self._timeout + 30)
        assert not self._thread.is_alive(), "callers did not end"

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as callers:
            for i, resource in enumerate(self._resources):
                socket = self._sockets[i % len(self._sockets)]
                callers.create_task(self._caller(socket, resource))

    async def _caller(self, socket: Path, resource: str) -> None:
        async with AsyncClient(str(socket)) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    answer = await client.call(
                        resource, "record", {"value": n}, timeout=self._timeout
                    )
                except OperationError as exc:
                    self.errors.append(f"{resource} #{n}: {exc.type}: {exc.message}")
                    await asyncio.sleep(0.05)  # a caller backing off, not a wait
                    continue
                except Exception as exc:  # the connection is gone: this caller ends
                    self.errors.append(f"{resource} #{n}: {type(exc).__name__}: {exc}")
                    return
                self.answers.append(answer)


def pid(daemon: Daemon) -> int:
    assert daemon.process is not None
    return daemon.process.pid


def pause(daemon: Daemon) -> None:
    os.kill(pid(daemon), signal.SIGSTOP)


def resume(daemon: Daemon) -> None:
    os.kill(pid(daemon), signal.SIGCONT)


class Tables:
    """The cluster's tables, as the test reads and writes them (its own connections)."""

    def __init__(self, database: str) -> None:
        self.database = database

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database, autocommit=True) as db:
            try:
                return db.execute(query, params).fetchall()
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                return []  # no node has made the schema yet

    def live_nodes(self) -> dict[str, list[str]]:
        """node id -> drivers, of the nodes live now."""
        rows = self.rows(
            "SELECT node_id, drivers FROM drivebay.node WHERE state = 'live'"
            " AND heartbeat > now() - interval '5 s'"
        )
        return {str(node): list(drivers) for node, drivers in rows}

    def wait_running(self, nodes: Iterable[str], driver: str = "mis") -> None:
        wanted = set(nodes)
        wait_for(
            lambda: all(driver in self.live_nodes().get(n, []) for n in wanted),
            30,
            f"{sorted(wanted)} live with {driver}",
        )

    def owners(self) -> dict[str, tuple[str | None, int]]:
        """resource -> (its owner under a lease not ended, or None; its epoch)."""
        rows = self.rows(
            "SELECT resource_id, CASE WHEN lease_until > now() THEN owner_node END, epoch"
            " FROM drivebay.ownership"
        )
        return {str(r): (owner, int(epoch)) for r, owner, epoch in rows}

    def operations(self) -> dict[int, tuple[str, int | None, Any]]:
        """operation id -> (state, the epoch it was dispatched under, result)."""
        rows = self.rows("SELECT id, state, dispatched_epoch, result FROM drivebay.operation")
        return {int(i): (s, e, result) for i, s, e, result in rows}

    def add(self, ids: Iterable[str], driver: str = "mis") -> None:
        async def main() -> None:
            async with cluster(self.database, "test", register=False) as (admin,):
                for resource_id in ids:
                    await admin.add_resource(Resource(resource_id, driver))

        run(main())

    def enqueue(self, calls: Iterable[tuple[str, str, dict[str, Any]]]) -> list[int]:
        async def main() -> list[int]:
            async with cluster(self.database, "test", register=False) as (admin,):
                return [await admin.enqueue(r, op, args) for r, op, args in calls]

        return run(main())
