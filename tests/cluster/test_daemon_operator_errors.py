"""Mistakes an operator can make on a clustered ``drivebayd``, each answered
in one line saying what to do, with nothing written to the cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from tests.cluster.daemons import TIMINGS
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import wait_for


def test_a_resource_of_a_driver_not_installed_on_this_node_says_where_to_add_it(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    cluster = {"database": database, "node_id": "bare", **TIMINGS}
    bare = daemon_factory("bare", {"cluster": cluster})  # no driver installed here
    bare.start()

    def joined() -> bool:
        try:
            with psycopg.connect(database) as db:
                row = db.execute("SELECT state FROM drivebay.node WHERE node_id = 'bare'")
                return row.fetchone() == ("live",)
        except psycopg.errors.UndefinedTable:
            return False

    wait_for(joined, 30, "node bare joined")
    added = bare.ctl("resource", "add", "r0", "--driver", "ledger")
    assert added.returncode != 0 and len(added.stderr.splitlines()) == 1, added.stderr
    assert "on node bare: driver ledger is not installed" in added.stderr, added.stderr
    assert "run the command on a node that has it" in added.stderr, added.stderr
    assert "Traceback" not in added.stderr + bare.log()
    with psycopg.connect(database) as db:
        assert db.execute("SELECT count(*) FROM drivebay.resource").fetchone() == (0,)
