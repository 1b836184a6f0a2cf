"""Real ``drivebayd`` processes with ``cluster:`` sharing the test PostgreSQL:
each joins, ``drivebayctl nodes`` of either lists both, and one stopped
leaves the cluster; a daemon without ``cluster:`` says how to join one."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import Daemon, wait_for
from tests.e2e.test_resources import misbehave_bundle

TIMINGS = {"lease_s": 3, "renew_s": 1, "grace_s": 1}


def clustered(daemon_factory: Any, database: str, node_id: str) -> Daemon:  # noqa: F811
    made: Daemon = daemon_factory(
        node_id, {"cluster": {"database": database, "node_id": node_id, **TIMINGS}}
    )
    return made


def nodes(daemon: Daemon) -> dict[str, dict[str, Any]]:
    ran = daemon.ctl("nodes", "--json")
    assert ran.returncode == 0, (ran.stderr, daemon.log())
    return {row["node_id"]: row for row in json.loads(ran.stdout)}


def test_two_daemons_list_each_other_and_a_stopped_one_leaves(
    daemon_factory: Any,  # noqa: F811
    database: str,
) -> None:
    a = clustered(daemon_factory, database, "node-a")
    b = clustered(daemon_factory, database, "node-b")
    a.start()
    b.start()

    def both_live(daemon: Daemon) -> dict[str, dict[str, Any]] | None:
        rows = nodes(daemon)
        live = {name for name, row in rows.items() if row["state"] == "live"}
        return rows if live == {"node-a", "node-b"} else None

    for daemon in (a, b):
        rows = wait_for(functools.partial(both_live, daemon), 30, "both nodes live")
        for row in rows.values():
            assert row["resources"] == 0 and row["last_heartbeat"] > 0
    plain = a.ctl("nodes")
    assert plain.returncode == 0, plain.stderr
    assert [line.split()[:2] for line in plain.stdout.splitlines()] == [
        ["node-a", "live"],
        ["node-b", "live"],
    ]

    assert b.stop() == 0, b.log()
    wait_for(lambda: nodes(a)["node-b"]["state"] == "left", 30, "node-b left")
    assert nodes(a)["node-a"]["state"] == "live"


def test_a_daemon_without_cluster_says_how_to_join_one(daemon_factory: Any) -> None:  # noqa: F811
    alone = daemon_factory("alone")
    alone.start()
    ran = alone.ctl("nodes")
    assert ran.returncode != 0
    assert ran.stdout == ""
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    assert "not in a cluster" in lines[0] and "cluster:" in lines[0], lines[0]


def test_a_node_registers_the_drivers_it_runs_as_they_start(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    a = clustered(daemon_factory, database, "node-a")
    b = clustered(daemon_factory, database, "node-b")
    staging = tmp_path / "staging"
    staging.mkdir()
    a.drop(misbehave_bundle(staging))
    a.start()
    b.start()

    def registered(wanted: dict[str, tuple[list[str], list[str]]]) -> bool:
        with psycopg.connect(database) as db:
            try:
                rows = db.execute(
                    "SELECT node_id, drivers, versions FROM drivebay.node WHERE state = 'live'"
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                return False  # no node has made the schema yet
        return {str(name): (list(d), list(v)) for name, d, v in rows} == wanted

    mis = (["mis"], ["mis@1.0.0"])
    wait_for(lambda: registered({"node-a": mis, "node-b": ([], [])}), 30, "a runs mis, b none")
    b.drop(misbehave_bundle(staging))  # installed after b joined
    wait_for(lambda: registered({"node-a": mis, "node-b": mis}), 30, "b runs mis too")
    b.wait_state("mis", "RUNNING")


def test_a_node_whose_database_is_missing_serves_alone_and_stops(
    daemon_factory: Any,  # noqa: F811
    database: str,
) -> None:
    missing = database.rsplit("/", 1)[0] + "/no_such_database"
    lost = clustered(daemon_factory, missing, "node-x")
    lost.start()  # answers although it cannot join
    ran = lost.ctl("nodes")
    assert ran.returncode != 0 and ran.stdout == ""
    lines = ran.stderr.splitlines()
    assert len(lines) == 1 and "cluster database" in lines[0], ran.stderr
    assert "no_such_database" in lines[0]
    assert lost.ctl("status").returncode in (0, 3)
    assert lost.stop() == 0, lost.log()


def test_a_node_whose_id_another_daemon_took_says_so_and_serves_alone(
    daemon_factory: Any,  # noqa: F811
    database: str,
) -> None:
    first = clustered(daemon_factory, database, "node-a")
    first.start()
    wait_for(lambda: "node-a" in nodes(first), 30, "node-a registered")
    second = daemon_factory(
        "second", {"cluster": {"database": database, "node_id": "node-a", **TIMINGS}}
    )
    second.start()  # registers node-a again: the first finds its id taken at its next round
    wait_for(lambda: "runs no resource queue" in first.log(), 30, "the first node stepping aside")
    said = [line for line in first.log().splitlines() if "runs no resource queue" in line]
    assert len(said) == 1 and "node-a" in said[0], said
    assert first.ctl("status").returncode in (0, 3)
    assert nodes(second)["node-a"]["state"] == "live"
    # The first still listens (the results of the calls it accepts reach it):
    # both processes named node-a hold a listening connection.
    wait_for(lambda: listening(database, "node-a") == 2, 30, "both node-a processes listening")
    assert first.stop() == 0, first.log()
    wait_for(lambda: listening(database, "node-a") == 1, 30, "the stopped one's listener closed")


def listening(database: str, node_id: str) -> int:
    """How many connections of drivebayd processes named ``node_id`` LISTEN."""
    with psycopg.connect(database) as db:
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND query LIKE 'LISTEN%%'",
            (f"drivebayd {node_id}",),
        ).fetchone()
    assert row is not None
    return int(row[0])
