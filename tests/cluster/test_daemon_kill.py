"""Three real ``drivebayd`` nodes under load; the one owning a third of the
resources is killed (SIGKILL: no goodbye). Every resource is owned again,
under a greater epoch, within lease + grace + one round (in the database's
time, from the kill); the drivers' shared ledger shows every accepted call
run exactly once when answered done (a call the dead node had sent is
settled by ``reconcile_operation``, which asks the device), never twice,
in order per resource; every call gets a final answer; the ownership
history shows epochs that only increase and leases that never overlap.

The timing is checked in two parts, both in the database's time. The
victim's leases end no later than ``lease_s`` after the kill: its last
renewal began before the kill, so this holds whatever the load (only a
renewal after the kill could break it). The survivors claim each of them
within ``renew_s + grace_s`` of its lease's end: their next round comes
within ``renew_s``, and ``grace_s`` (0.5 s) is all the margin left for
their scheduling and the claim statement. Together: the issue's bound,
lease + grace + one round (3.0 s). Measured on 2 CPUs with two busy loops
beside the test (four runs): leases ended 1.70-1.87 s after
the kill, claimed 0.01-0.48 s after their end (margin 0.52 s), failover
1.86-2.28 s (margin 0.72 s). A survivor whose round starts more than
``grace_s`` late fails it: that is the bound, not a flake."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.cluster.daemons import TIMINGS, CallLoad, Tables, clustered
from tests.cluster.ledger_cluster import (
    check_answers,
    check_history,
    check_ledger,
    check_stale_sends,
    history,
    install_audit,
    ledger_lines,
    new_ledger,
    read_ledger,
    spread,
)
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import wait_for

RESOURCES = [f"r{i}" for i in range(9)]
BOUND_S = TIMINGS["lease_s"] + TIMINGS["grace_s"] + TIMINGS["renew_s"]


def test_a_node_killed_under_load_loses_nothing_and_repeats_nothing(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    tables = Tables(database)
    ledger = new_ledger(tmp_path / "ledger.jsonl")
    staging = tmp_path / "staging"
    victim, *survivors = [
        clustered(daemon_factory, database, name, staging, ledger=ledger)
        for name in ("victim", "b", "c")
    ]
    victim.start()
    tables.wait_running(["victim"], "cled")
    install_audit(database)
    for node in survivors:
        node.start()
    tables.wait_running(["b", "c"], "cled")
    for resource in RESOURCES:
        added = survivors[0].ctl("resource", "add", resource, "--driver", "cled")
        assert added.returncode == 0, added.stderr
    wait_for(lambda: spread(tables, {"victim": 3, "b": 3, "c": 3}), 30, "three resources each")
    before = tables.owners()
    lost = sorted(r for r, (owner, _) in before.items() if owner == "victim")

    load = CallLoad([n.socket for n in survivors], RESOURCES).start()
    try:
        wait_for(lambda: ledger_lines(ledger, "victim") >= 9, 30, "calls run on the victim")
        assert victim.process is not None
        killed_at = time.time()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(30)
        wait_for(lambda: _owned_by(tables, ["b", "c"], RESOURCES), 30, "all owned again")
        after = tables.owners()
        assert all(after[r][1] > before[r][1] for r in lost), (before, after)
        heard = ledger_lines(ledger, "b") + ledger_lines(ledger, "c")
        wait_for(
            lambda: ledger_lines(ledger, "b") + ledger_lines(ledger, "c") >= heard + 18, 30, "load"
        )
    finally:
        load.stop()

    operations = wait_for(lambda: _all_final(tables), 30, "every call final")
    lines = read_ledger(ledger)
    check_ledger(lines, operations)
    failed = check_answers(load.errors, operations)
    rows = history(database)
    check_history(rows)
    check_stale_sends(lines, rows)
    # Owned again within lease + grace + one round of the kill, in the database's
    # time: the victim's leases ended within lease_s of the kill (load cannot
    # change that), and each was claimed within renew_s + grace_s of its end.
    ended: dict[str, float] = {}  # the victim's last lease_until of each, after the kill
    claimed: dict[str, float] = {}
    for resource, owner, epoch, until, now in rows:
        if resource not in lost:
            continue
        if owner == "victim" and epoch == before[resource][1] and until is not None:
            ended[resource] = until.timestamp() - killed_at
        elif owner is not None and owner != "victim" and epoch > before[resource][1]:
            claimed.setdefault(resource, now.timestamp() - killed_at)
    assert sorted(claimed) == lost == sorted(ended)
    failover_s = max(claimed.values())
    after_end = {r: claimed[r] - ended[r] for r in lost}
    settled = sum(1 for _, _, result in operations.values() if result.get("reconciled"))
    print(
        f"\nfailover {failover_s:.2f} s (bound {BOUND_S} s); leases ended "
        f"{min(ended.values()):.2f}-{max(ended.values()):.2f} s after the kill, claimed "
        f"{min(after_end.values()):.2f}-{max(after_end.values()):.2f} s after their end; "
        f"{len(operations)} calls, {settled} settled by reconcile_operation, "
        f"{failed} found never sent"
    )
    assert max(ended.values()) <= TIMINGS["lease_s"], ended  # no renewal after the kill
    assert max(after_end.values()) <= TIMINGS["renew_s"] + TIMINGS["grace_s"], after_end
    assert failover_s <= BOUND_S, failover_s
    for node in survivors:
        assert node.stop() == 0, node.log()


def _owned_by(tables: Tables, nodes: list[str], resources: list[str]) -> bool:
    owners = tables.owners()
    return all(owners.get(r, (None, 0))[0] in nodes for r in resources)


def _all_final(tables: Tables) -> dict[int, tuple[str, int | None, Any]] | None:
    rows = tables.operations()
    return rows if all(state in ("done", "failed") for state, _, _ in rows.values()) else None
