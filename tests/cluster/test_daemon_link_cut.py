"""A real ``drivebayd`` node whose database link is black-holed (through the
test's TCP proxy: nothing forwarded either way, nothing closed) under load:
its drivers get no call from ``lease_s - grace_s`` after the cut (the drivers'
shared ledger, on the host's clock), the other node takes its resources over
under greater epochs, and once the link returns the node rejoins, and runs
calls again only under new epochs. Every call is run at most once and in
order, and answered; leases never overlap in the database's time."""

from __future__ import annotations

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
    ran_on,
    read_ledger,
    spread,
)
from tests.cluster.tcp_proxy import TcpProxy
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import wait_for
from tests.postgres import SUPERUSER, ThrowawayPostgres

RESOURCES = [f"r{i}" for i in range(4)]
FENCE_S = TIMINGS["lease_s"] - TIMINGS["grace_s"]


def test_a_node_cut_off_stops_sending_and_rejoins_under_new_epochs(
    daemon_factory: Any,  # noqa: F811
    postgres: ThrowawayPostgres,
    database: str,
    tmp_path: Path,
) -> None:
    tables = Tables(database)
    errors: list[str] = []
    ledger = new_ledger(tmp_path / "ledger.jsonl")
    staging = tmp_path / "staging"
    dbname = database.split("?")[0].rsplit("/", 1)[1]
    seen: dict[str, float] = {}
    with TcpProxy(f"{postgres.socket_dir}/.s.PGSQL.5432") as proxy:
        cut = clustered(daemon_factory, proxy.url(dbname, SUPERUSER), "cut", staging, ledger=ledger)
        other = clustered(daemon_factory, database, "other", staging, ledger=ledger)
        cut.start()
        tables.wait_running(["cut"], "cled")
        install_audit(database)
        other.start()
        tables.wait_running(["other"], "cled")
        for resource in RESOURCES:
            added = other.ctl("resource", "add", resource, "--driver", "cled")
            assert added.returncode == 0, added.stderr
        wait_for(lambda: spread(tables, {"cut": 2, "other": 2}), 30, "two resources each")
        before = tables.owners()
        lost = sorted(r for r, (owner, _) in before.items() if owner == "cut")

        load = CallLoad([other.socket], RESOURCES, errors=errors).start()
        try:
            wait_for(lambda: ledger_lines(ledger, "cut") >= 6, 30, "calls run on the cut node")
            proxy.blackhole()
            t_cut, cut_wall = time.monotonic(), time.time()
            wait_for(lambda: spread(tables, {"other": 4}), 30, "the other node owning all")
            seen["taken_over_after_s"] = time.monotonic() - t_cut
            taken = tables.owners()
            assert all(taken[r][1] > before[r][1] for r in lost), (before, taken)
            heard = ledger_lines(ledger, "other")
            wait_for(lambda: ledger_lines(ledger, "other") >= heard + 8, 30, "calls go on")
            proxy.restore()
            t_back, back_wall = time.monotonic(), time.time()
            load.stop()
            wait_for(lambda: spread(tables, {"cut": 2, "other": 2}), 30, "two each again")
            seen["share_back_after_s"] = time.monotonic() - t_back
            again = tables.owners()
            back = sorted(r for r, (owner, _) in again.items() if owner == "cut")
            assert all(again[r][1] > taken[r][1] for r in back), (taken, again)
            load = CallLoad([cut.socket], RESOURCES, errors=errors).start()
            wait_for(lambda: ran_on(ledger, "cut", back, again), 30, "calls run on it again")
        finally:
            load.stop()
        assert cut.stop() == 0, cut.log()
        assert other.stop() == 0, other.log()

    lines = read_ledger(ledger)
    sent_cut = [line["wall"] - cut_wall for line in lines if line["node"] == "cut"]
    seen["last_call_after_cut_s"] = max(w for w in sent_cut if w < back_wall - cut_wall)
    late = [w for w in sent_cut if FENCE_S <= w < back_wall - cut_wall]
    assert late == [], late  # nothing reached its drivers past the fence
    operations = tables.operations()
    check_ledger(lines, operations)
    check_answers(errors, operations)
    rows = history(database)
    check_history(rows)
    check_stale_sends(lines, rows)
    print(f"\nblack-holed drivebayd: {seen}")
