"""Real ``drivebayd`` nodes started with the fault-point test setting
(kernel/cluster/fault_points.py): one is held at each named point of a
dispatch (before the dispatch commit, between it and the send, before the
result write), paused past its lease while another node takes its
resources over and settles them, then let go after it renewed again: it
sends nothing for them (the drivers' shared ledger) and its writes change
nothing; each operation is run or settled once, under the new owner's
epoch: held before the commit, the heir runs it; held before the send, the
heir's ``reconcile_operation`` finds the device never saw it; held before
the result write, it finds the call the old node sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cluster.daemons import Tables, clustered, pause, resume
from tests.cluster.fault_server import FaultServer
from tests.cluster.ledger_cluster import check_ledger, new_ledger, read_ledger
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
        ledger = new_ledger(tmp_path / "ledger.jsonl")
        old = clustered(daemon_factory, database, "old", tmp_path / "staging", ledger=ledger)
        heir = clustered(daemon_factory, database, "heir", tmp_path / "staging", ledger=ledger)
        old.start(env=faults.env)
        tables.wait_running(["old"], "cled")
        tables.add(POINTS, "cled")
        wait_for(lambda: _owned_by(tables, "old", POINTS), 30, "old owning r000-r002")
        before = tables.owners()
        for resource, point in POINTS.items():
            faults.hold(point, node="old", resource=resource)
        ops = dict(
            zip(POINTS, tables.enqueue((r, "record", {"value": r}) for r in POINTS), strict=True)
        )
        held = faults.wait_held(3)
        assert {(a["resource"], a["point"]) for a in held} == set(POINTS.items())

        heir.start(env=faults.env)  # the old node's queues are busy: it gives none up
        tables.wait_running(["heir"], "cled")
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
        ran = {line["op_id"]: line for line in read_ledger(ledger)}
        for resource, op in ops.items():
            state, epoch, result = final[op]
            assert epoch == taken[resource][1] > before[resource][1], (resource, final[op])
            old_points = [a["point"] for a in faults.reached(node="old", op=op)]
            heir_points = [a["point"] for a in faults.reached(node="heir", op=op)]
            point = POINTS[resource]
            if point == "dispatch":  # never marked by old: the heir runs it
                assert old_points == ["dispatch"]
                assert heir_points == ["dispatch", "send", "result"]
                assert (ran[op]["node"], ran[op]["epoch"]) == ("heir", epoch)
                assert state == "done" and result["node"] == "heir", final[op]
            elif point == "send":  # marked by old, never sent: the device never saw it
                assert old_points == ["dispatch", "send"]
                assert heir_points == ["result"]
                assert op not in ran
                assert state == "failed" and result["type"] == "LookupError", final[op]
            else:  # sent by old, its result never recorded: the heir asks the device
                assert old_points == ["dispatch", "send", "result"]
                assert heir_points == ["result"]
                assert ran[op]["node"] == "old" and ran[op]["epoch"] < epoch
                assert state == "done" and result["reconciled"], final[op]
        check_ledger(list(ran.values()), final)


def _owned_by(tables: Tables, node: str, resources: dict[str, str]) -> bool:
    owners = tables.owners()
    return all(owners.get(r, (None, 0))[0] == node for r in resources)


def _final(tables: Tables, ops: Any) -> dict[int, tuple[str, int | None, Any]] | None:
    rows = tables.operations()
    wanted = set(ops)
    if all(rows.get(op, ("queued",))[0] in ("done", "failed") for op in wanted):
        return rows
    return None
