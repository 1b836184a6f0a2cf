"""A real ``drivebayd`` under load whose PostgreSQL server (one of the test's
own) stops for longer than a lease, then starts again: from ``lease_s -
grace_s`` after the stop no call reaches its drivers (the ledger, on the
host's clock); once the server is back, its calls run again only under new
epochs. Calls made while the database is down are refused with one line;
the others are answered, run at most once and in order."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.cluster.daemons import TIMINGS, CallLoad, Tables, clustered
from tests.cluster.ledger_cluster import (
    NEVER_REACHED,
    check_history,
    check_ledger,
    history,
    install_audit,
    new_ledger,
    read_ledger,
)
from tests.cluster.test_link_cut import own_server  # noqa: F401 -- fixture
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import wait_for
from tests.postgres import ThrowawayPostgres

RESOURCES = [f"r{i}" for i in range(3)]
FENCE_S = TIMINGS["lease_s"] - TIMINGS["grace_s"]


def test_a_stopped_database_stops_the_calls_and_they_resume_under_new_epochs(
    own_server: ThrowawayPostgres,  # noqa: F811 -- first: it outlives the daemon
    daemon_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    database = own_server.url()
    tables = Tables(database)
    ledger = new_ledger(tmp_path / "ledger.jsonl")
    alone = clustered(daemon_factory, database, "alone", tmp_path / "staging", ledger=ledger)
    alone.start()
    tables.wait_running(["alone"], "cled")
    install_audit(database)
    for resource in RESOURCES:
        added = alone.ctl("resource", "add", resource, "--driver", "cled")
        assert added.returncode == 0, added.stderr
    wait_for(lambda: len([o for o, _ in tables.owners().values() if o]) == 3, 30, "all owned")
    before = tables.owners()
    load = CallLoad([alone.socket], RESOURCES, timeout=10).start()
    try:
        wait_for(lambda: len(read_ledger(ledger)) >= 6, 30, "calls run")
        stopped_wall = time.time()
        own_server.shut_down()
        # Down past the lease (the outage's length is the scenario, not a wait).
        time.sleep(TIMINGS["lease_s"] + TIMINGS["grace_s"])
        back_wall = time.time()
        own_server.launch()
        wait_for(lambda: _ran_after(ledger, back_wall, RESOURCES), 30, "calls run again")
    finally:
        load.stop()
    lines = read_ledger(ledger)
    late = [line for line in lines if stopped_wall + FENCE_S <= line["wall"] < back_wall]
    assert late == [], late  # nothing reached the drivers past the fence
    resumed = [line for line in lines if line["wall"] >= back_wall]
    assert all(line["epoch"] > before[line["resource"]][1] for line in resumed), resumed
    operations = tables.operations()
    check_ledger(lines, operations)
    check_history(history(database))
    refused = [e for e in load.errors if not NEVER_REACHED.search(e)]
    print(f"\n{len(operations)} calls queued, {len(refused)} refused while down: {refused[:1]}")
    assert all("cluster database" in e for e in refused), refused
    assert alone.stop() == 0, alone.log()


def _ran_after(ledger: Path, wall: float, resources: list[str]) -> bool:
    return {line["resource"] for line in read_ledger(ledger) if line["wall"] > wall} >= set(
        resources
    )
