"""``drivebayctl drain-node`` with real ``drivebayd`` processes sharing the
test PostgreSQL: two nodes running the same driver share its resources;
draining one (``--wait``) moves them all to the other, ``nodes`` lists it
draining with 0 resources, and ``--undo`` gives it its share back. Each
refusal is one line: an unknown node, a drain that would strand resources,
a daemon without ``cluster:``. The HTTP routes do the same."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from drivebay.kernel.control.schema import RESULTS, DrainNodeRequest
from tests.cluster.test_daemon_nodes import clustered, nodes
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import FAST_CONFIG, Daemon, wait_for
from tests.e2e.test_http_api import Api, check_against_openapi
from tests.e2e.test_resources import misbehave_bundle

RESOURCES = 6


def add_resources(database: str, driver: str, count: int) -> None:
    """Resources of ``driver`` in the cluster's tables, owned by nobody yet."""
    with psycopg.connect(database) as db:
        for i in range(count):
            db.execute(
                "INSERT INTO drivebay.resource (id, driver) VALUES (%s, %s)", (f"r{i}", driver)
            )
            db.execute("INSERT INTO drivebay.ownership (resource_id) VALUES (%s)", (f"r{i}",))


def drain_lines(log: str) -> list[str] | None:
    """What the node said of its drain (the text after ``cluster: ``), once
    it said it is live again."""
    said = [
        line.partition("cluster: ")[2]
        for line in log.splitlines()
        if "cluster: " in line and ("drain" in line.partition("cluster: ")[2])
    ]
    return said if said and "live again" in said[-1] else None


def holding(daemon: Daemon, wanted: dict[str, int]) -> dict[str, dict[str, Any]] | None:
    rows = nodes(daemon)
    return rows if {n: r["resources"] for n, r in rows.items()} == wanted else None


def test_a_drained_node_hands_its_resources_to_the_other_and_comes_back(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    a = clustered(daemon_factory, database, "node-a")
    b = clustered(daemon_factory, database, "node-b")
    staging = tmp_path / "staging"
    staging.mkdir()
    a.drop(misbehave_bundle(staging))
    b.drop(misbehave_bundle(staging))
    a.start()
    b.start()
    a.wait_state("mis", "RUNNING")
    b.wait_state("mis", "RUNNING")

    def registered() -> bool:
        with psycopg.connect(database) as db:
            try:
                rows = db.execute(
                    "SELECT count(*) FROM drivebay.node WHERE 'mis' = ANY (drivers)"
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                return False
        return rows is not None and rows[0] == 2

    wait_for(registered, 30, "both nodes run mis")
    add_resources(database, "mis", RESOURCES)
    half = RESOURCES // 2
    wait_for(functools.partial(holding, a, {"node-a": half, "node-b": half}), 30, "spread")

    ran = a.ctl("drain-node", "node-b", "--wait", "--timeout", "30", "--json")
    assert ran.returncode == 0, (ran.stderr, a.log(), b.log())
    drained = json.loads(ran.stdout)
    msgspec.convert(drained, RESULTS[DrainNodeRequest])
    assert (drained["node_id"], drained["state"], drained["resources"]) == ("node-b", "draining", 0)
    rows = wait_for(
        functools.partial(holding, b, {"node-a": RESOURCES, "node-b": 0}), 30, "all on node-a"
    )
    assert rows["node-b"]["state"] == "draining" and rows["node-a"]["state"] == "live"
    plain = a.ctl("nodes")
    assert [line.split()[:2] for line in plain.stdout.splitlines()] == [
        ["node-a", "live"],
        ["node-b", "draining"],
    ]
    assert "0 resources" in plain.stdout.splitlines()[1]

    refused = a.ctl("drain-node", "node-a")  # node-b, draining, runs nothing for it
    assert refused.returncode == 1 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "no other live node runs mis (6 resources)" in refused.stderr
    assert "--force" in refused.stderr
    unknown = b.ctl("drain-node", "node-x")
    assert unknown.returncode == 4 and len(unknown.stderr.splitlines()) == 1, unknown.stderr
    assert "no node node-x in the cluster" in unknown.stderr

    mixed = b.ctl("drain-node", "--undo", "--wait", "node-b")
    assert mixed.returncode == 1 and len(mixed.stderr.splitlines()) == 1, mixed.stderr
    assert "not with --undo" in mixed.stderr
    undone = b.ctl("drain-node", "--undo", "node-b")
    assert undone.returncode == 0, undone.stderr
    assert undone.stdout.strip() == "node-b is live: it claims its share again"
    wait_for(functools.partial(holding, a, {"node-a": half, "node-b": half}), 30, "spread again")
    said = wait_for(lambda: drain_lines(b.log()), 30, "node-b says it is live again")
    assert said[0] == (
        f"node node-b is draining: it claims nothing more and hands over its {half} "
        "resources, each once its queue is idle"
    ), said
    handed = [line for line in said if line.startswith("draining: handed over ")]
    assert sum(int(line.split()[3]) for line in handed) == half, said
    assert handed[-1].endswith(" 0 still held (their queues are busy)"), said
    assert said[1 + len(handed) :] == [  # once each, however many rounds went by
        "node node-b drained: holds no resource; "
        "'drivebayctl drain-node node-b --undo' makes it claim again",
        "node node-b is live again (drain undone): it claims its share again",
    ], said

    # The same over HTTP (the routes derived from the schema), checked against OpenAPI.
    http = Api(str(b.state / "http.sock"))
    status, answer = http("POST", "/v1/nodes/node-a/drain", {"wait": True, "timeout": 30})
    assert status == 200, answer
    assert (answer["node_id"], answer["state"], answer["resources"]) == ("node-a", "draining", 0)
    status, answer = http("DELETE", "/v1/nodes/node-a/drain")
    assert (status, answer["state"]) == (200, "live")
    status, answer = http("POST", "/v1/nodes/node-x/drain")
    assert status == 404 and "no node node-x" in answer["detail"], answer
    check_against_openapi(http)

    # Idle, it stops without waiting for anything (about 0.1 s here): well
    # under drain_s (3 s), which it would wait with a call in flight.
    started = time.monotonic()
    assert b.stop() == 0, b.log()
    assert time.monotonic() - started < FAST_CONFIG["timeouts"]["drain_s"], b.log()


def test_drain_node_without_cluster_says_how_to_configure_one(
    daemon_factory: Any,  # noqa: F811
) -> None:
    alone = daemon_factory("alone")
    alone.start()
    ran = alone.ctl("drain-node", "node-a")
    assert ran.returncode == 1 and ran.stdout == ""
    lines = ran.stderr.splitlines()
    assert len(lines) == 1 and "not in a cluster" in lines[0] and "cluster:" in lines[0], lines
