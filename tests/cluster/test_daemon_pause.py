"""A real ``drivebayd`` node paused (SIGSTOP) past its lease under load, then
let go (SIGCONT): the other node takes its resources over under greater
epochs; the paused node sends no call to its drivers for a resource it lost
(the drivers' shared ledger shows none under an epoch after a newer one was
claimed), its guarded writes change nothing (what it had sent is settled by
the heir through ``reconcile_operation``), and it rejoins as an ordinary
node: it gets its share back under new epochs and runs calls again. The
ownership history the database kept shows epochs that only increase and
leases that never overlap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cluster.daemons import CallLoad, Tables, clustered, pause, resume
from tests.cluster.ledger_cluster import (
    check_answers,
    check_history,
    check_ledger,
    check_stale_sends,
    history,
    install_audit,
    ledger_lines,
    new_ledger,
    ran_on,
    read_ledger,
    spread,
)
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import wait_for

RESOURCES = [f"r{i}" for i in range(4)]


def test_a_paused_node_sends_nothing_for_what_it_lost_and_rejoins(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    tables = Tables(database)
    errors: list[str] = []
    ledger = new_ledger(tmp_path / "ledger.jsonl")
    staging = tmp_path / "staging"
    paused = clustered(daemon_factory, database, "paused", staging, ledger=ledger)
    other = clustered(daemon_factory, database, "other", staging, ledger=ledger)
    paused.start()
    tables.wait_running(["paused"], "cled")
    install_audit(database)
    other.start()
    tables.wait_running(["other"], "cled")
    for resource in RESOURCES:
        added = other.ctl("resource", "add", resource, "--driver", "cled")
        assert added.returncode == 0, added.stderr
    wait_for(lambda: spread(tables, {"paused": 2, "other": 2}), 30, "two resources each")
    before = tables.owners()
    lost = sorted(r for r, (owner, _) in before.items() if owner == "paused")

    load = CallLoad([other.socket], RESOURCES, errors=errors).start()
    try:
        wait_for(
            lambda: ledger_lines(ledger, node="paused") >= 6, 30, "calls run on the paused node"
        )
        pause(paused)
        try:
            wait_for(lambda: spread(tables, {"other": 4}), 30, "the other node owning all")
            taken = tables.owners()
            assert all(taken[r][1] > before[r][1] for r in lost), (before, taken)
            heard = ledger_lines(ledger, node="other")
            wait_for(lambda: ledger_lines(ledger, node="other") >= heard + 8, 30, "calls go on")
        finally:
            resume(paused)
        load.stop()
        # It rejoins as an ordinary node: its share back, under new epochs.
        wait_for(lambda: spread(tables, {"paused": 2, "other": 2}), 30, "two each again")
        again = tables.owners()
        back = sorted(r for r, (owner, _) in again.items() if owner == "paused")
        assert all(again[r][1] > taken[r][1] for r in back), (taken, again)
        load = CallLoad([paused.socket], RESOURCES, errors=errors).start()
        wait_for(lambda: ran_on(ledger, "paused", back, again), 30, "calls run on it again")
    finally:
        load.stop()

    lines = read_ledger(ledger)
    operations = tables.operations()
    check_ledger(lines, operations)
    check_answers(errors, operations)
    rows = history(database)
    check_history(rows)
    check_stale_sends(lines, rows)  # nothing reached a driver under a lost lease
    for line in lines:  # what it sent before the pause and could not record: settled by another
        _state, epoch, result = operations[line["op_id"]]
        if epoch != line["epoch"]:
            assert result.get("reconciled") and result["node"] == line["node"], (line, result)
    settled = sum(1 for _, _, result in operations.values() if result.get("reconciled"))
    print(f"\n{len(operations)} calls, {settled} settled by reconcile_operation")
    assert paused.stop() == 0, paused.log()
    assert other.stop() == 0, other.log()
