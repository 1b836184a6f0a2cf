"""Real ``drivebayd`` nodes started with the fault-point test setting
(kernel/cluster/fault_points.py): one is held at each named point of a
dispatch (before the dispatch commit, between it and the send, before the
result write), paused past its lease while another node takes its
resources over and settles them, then let go: it sends nothing for them
and its writes change nothing; each operation is settled once, under the
new owner's epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cluster.daemons import Tables, clustered, pause, resume
from tests.cluster.fault_server import FaultServer
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import wait_for

POINTS = {"r000": "dispatch", "r001": "send", "r002": "result"}


def test_a_node_held_at_each_point_while_another_takes_over(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    tables = Tables(database)
    with FaultServer() as faults:
        old = clustered(daemon_factory, database, "old", tmp_path / "staging")
        heir = clustered(daemon_factory, database, "heir", tmp_path / "staging")
        old.start(env=faults.env)
        tables.wait_running(["old"])
        tables.add(POINTS)
        wait_for(lambda: _owned_by(tables, "old", POINTS), 30, "old owning r000-r002")
        before = tables.owners()
        for resource, point in POINTS.items():
            faults.hold(point, node="old", resource=resource)
        ops = dict(zip(POINTS, tables.enqueue((r, "ping", {}) for r in POINTS), strict=True))
        held = faults.wait_held(3)
        assert {(a["resource"], a["point"]) for a in held} == set(POINTS.items())

        heir.start(env=faults.env)  # the old node's queues are busy: it gives none up
        tables.wait_running(["heir"])
        pause(old)
        try:
            wait_for(lambda: _owned_by(tables, "heir", POINTS), 30, "heir owning r000-r002")
            taken = tables.owners()
            final = wait_for(lambda: _final(tables, ops.values()), 30, "operations settled")
        finally:
            resume(old)
        # The old node renews again (its lost leases are gone) before it goes on.
        rejoined = tables.rows("SELECT heartbeat FROM drivebay.node WHERE node_id = 'old'")
        wait_for(
            lambda: (
                tables.rows("SELECT heartbeat FROM drivebay.node WHERE node_id = 'old'") > rejoined
            ),
            30,
            "old renewing again",
        )
        faults.release()
        assert old.stop() == 0, old.log()  # its held dispatches have ended by now

        after = tables.owners()  # the old node may own some again: under new epochs
        assert all(after[r][1] >= taken[r][1] for r in POINTS), (taken, after)
        assert tables.operations() == final  # the old node's writes changed nothing
        for resource, op in ops.items():
            state, epoch, result = final[op]
            assert epoch == taken[resource][1] > before[resource][1], (resource, final[op])
            old_points = [a["point"] for a in faults.reached(node="old", op=op)]
            heir_points = [a["point"] for a in faults.reached(node="heir", op=op)]
            if POINTS[resource] == "dispatch":  # never marked by old: the heir runs it
                assert old_points == ["dispatch"]
                assert heir_points == ["dispatch", "send", "result"]
            else:  # marked by old, whose send was never recorded: OutcomeUnknown
                assert (state, result["type"]) == ("failed", "OutcomeUnknown"), final[op]
                expected = ["dispatch", "send"] + (["result"] if resource == "r002" else [])
                assert old_points == expected, (resource, old_points)
                assert heir_points == ["result"]


def _owned_by(tables: Tables, node: str, resources: dict[str, str]) -> bool:
    owners = tables.owners()
    return all(owners.get(r, (None, 0))[0] == node for r in resources)


def _final(tables: Tables, ops: Any) -> dict[int, tuple[str, int | None, Any]] | None:
    rows = tables.operations()
    wanted = set(ops)
    if all(rows.get(op, ("queued",))[0] in ("done", "failed") for op in wanted):
        return rows
    return None
