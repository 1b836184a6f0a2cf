"""A seeded random race over real ``drivebayd`` nodes under load: each round
one or two nodes are killed (SIGKILL, then started again), paused (SIGSTOP,
then SIGCONT) or cut off (their link black-holed through their own TCP
proxy, then restored), for random lengths around the lease; then the test
waits until every node is back and every resource owned. Afterwards the
database's ownership history shows each resource's epochs only increasing
and no two owners' leases overlapping in the database's time; the drivers'
shared ledger shows no call run twice, none under an epoch after a newer
one was claimed, each resource's in order; every call accepted has a final
answer. The seed is printed on failure; DRIVEBAY_RACE_SEED replays one."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.daemons import Tables, clustered, pause, resume
from tests.cluster.helpers import cluster
from tests.cluster.ledger_cluster import (
    check_history,
    check_ledger,
    check_stale_sends,
    history,
    install_audit,
    new_ledger,
    read_ledger,
)
from tests.cluster.tcp_proxy import TcpProxy
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import Daemon, wait_for
from tests.postgres import SUPERUSER, ThrowawayPostgres

ROUNDS = 3
NODES = ("n1", "n2", "n3")
RESOURCES = [f"r{i}" for i in range(6)]


class QueueLoad:
    """Calls written straight into the queue (as any node accepts them), one
    every 10 ms round robin, on a thread of its own until ``stop``."""

    def __init__(self, database: str) -> None:
        self.accepted: list[int] = []
        self._database = database
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load")

    def start(self) -> QueueLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the load did not end"

    async def _run(self) -> None:
        async with cluster(self._database, "front", register=False) as (front,):
            n = 0
            while not self._stop.is_set():
                n += 1
                resource = RESOURCES[n % len(RESOURCES)]
                self.accepted.append(await front.enqueue(resource, "record", {"value": n}))
                await asyncio.sleep(0.01)


@pytest.fixture
def seed() -> int:
    return int(os.environ.get("DRIVEBAY_RACE_SEED") or random.randrange(2**32))


def test_a_random_race_of_kills_pauses_and_cuts(
    daemon_factory: Any,  # noqa: F811
    postgres: ThrowawayPostgres,
    database: str,
    tmp_path: Path,
    seed: int,
) -> None:
    rng = random.Random(seed)
    tables = Tables(database)
    ledger = new_ledger(tmp_path / "ledger.jsonl")
    staging = tmp_path / "staging"
    dbname = database.split("?")[0].rsplit("/", 1)[1]
    played: list[str] = []
    try:
        with ExitStack() as stack:
            proxies = {
                name: stack.enter_context(TcpProxy(f"{postgres.socket_dir}/.s.PGSQL.5432"))
                for name in NODES
            }
            nodes = {
                name: clustered(
                    daemon_factory,
                    proxies[name].url(dbname, SUPERUSER),
                    name,
                    staging,
                    ledger=ledger,
                )
                for name in NODES
            }
            nodes["n1"].start()
            tables.wait_running(["n1"], "cled")
            install_audit(database)
            for name in NODES[1:]:
                nodes[name].start()
            tables.wait_running(NODES, "cled")
            tables.add(RESOURCES, "cled")
            wait_for(lambda: _all_owned(tables), 30, "every resource owned")
            load = QueueLoad(database).start()
            try:
                for _ in range(ROUNDS):
                    chosen = rng.sample(NODES, rng.choice((1, 2)))
                    faults = [(name, rng.choice(("kill", "pause", "cut"))) for name in chosen]
                    lengths = [rng.uniform(0.3, 2.8) for _ in faults]
                    played.append(
                        ", ".join(
                            f"{a} {n} {s:.1f}s" for (n, a), s in zip(faults, lengths, strict=True)
                        )
                    )
                    heal = [_fault(nodes[n], proxies[n], a) for n, a in faults]
                    started = time.monotonic()
                    for length, undo in sorted(zip(lengths, heal, strict=True), key=lambda x: x[0]):
                        # The length of the fault is the scenario, not a wait for something.
                        time.sleep(max(0.0, started + length - time.monotonic()))
                        undo()
                    tables.wait_running(NODES, "cled")
                    wait_for(lambda: _all_owned(tables), 30, "every resource owned again")
            finally:
                load.stop()
            operations = wait_for(lambda: _final(tables, load.accepted), 60, "all calls final")
            for name in NODES:
                assert nodes[name].stop() == 0, nodes[name].log()
        lines = read_ledger(ledger)
        check_ledger(lines, operations)
        rows = history(database)
        check_history(rows)
        check_stale_sends(lines, rows)
        print(f"\nrace seed {seed}: {'; '.join(played)}; {len(operations)} calls")
    except AssertionError as exc:
        raise AssertionError(f"DRIVEBAY_RACE_SEED={seed} ({'; '.join(played)}): {exc}") from exc


def _fault(daemon: Daemon, proxy: TcpProxy, action: str) -> Callable[[], None]:
    """Start ``action`` on the node; returns what ends it."""
    if action == "kill":
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(30)
        return lambda: daemon.start()
    if action == "pause":
        pause(daemon)
        return lambda: resume(daemon)
    proxy.blackhole()
    return proxy.restore


def _all_owned(tables: Tables) -> bool:
    owners = tables.owners()
    return len(owners) == len(RESOURCES) and all(o is not None for o, _ in owners.values())


def _final(tables: Tables, accepted: list[int]) -> dict[int, tuple[str, int | None, Any]] | None:
    rows = tables.operations()
    done = all(rows.get(op, ("queued",))[0] in ("done", "failed") for op in accepted)
    return rows if done else None
