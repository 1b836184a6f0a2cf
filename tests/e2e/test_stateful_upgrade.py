"""A driver's state and sockets cross upgrades, property changes and
rollbacks in a real daemon (the ``stateful`` fixture: a counter and a
listening socket per resource, each hook call written to a journal)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.e2e.harness import Daemon, wait_for
from tests.helpers import FIXTURES
from tests.sandbox.bundles import make_bundle

SOURCE = (FIXTURES / "stateful" / "src" / "stateful.py").read_text()
PROPERTIES = [
    {"key": "journal", "type": "string", "required": True},
    {"key": "label", "type": "string"},
    {"key": "fail_takeover_in", "type": "string"},
]
RESOURCES = ("r1", "r2", "r3")


def stateful_bundle(staging: Path, version: str, entry: str = "Stateful") -> Path:
    return make_bundle(
        staging,
        "stateful",
        version,
        {"entrypoint": f"stateful:{entry}", "properties": PROPERTIES},
        {"stateful.py": SOURCE},
    )


def only_version_running(daemon: Daemon, version: str) -> bool:
    rows = [row for row in daemon.status().values() if row["name"] == "stateful"]
    return len(rows) == 1 and rows[0]["version"] == version and rows[0]["state"] == "RUNNING"


def version_states(daemon: Daemon) -> list[tuple[str, str]]:
    rows = json.loads(daemon.ctl("status", "--json").stdout)
    return sorted((row["version"], row["state"]) for row in rows)


def bump(daemon: Daemon, resource: str) -> dict[str, Any]:
    done = daemon.ctl("call", resource, "bump")
    assert done.returncode == 0, done.stderr + daemon.log()
    facts: dict[str, Any] = json.loads(done.stdout)
    return facts


def ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        return conn.makefile().readline().strip()


def test_state_and_sockets_cross_upgrades_changes_and_rollbacks(daemon_factory, tmp_path):
    journal = tmp_path / "journal"
    config = {"drivers": {"stateful": {"env": {"STATEFUL_FAIL_TAKEOVER": "3.0.0:r2"}}}}
    daemon = daemon_factory(config=config)
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(stateful_bundle(staging, "1.0.0"))
    daemon.start()
    daemon.wait_state("stateful", "RUNNING")
    for resource in RESOURCES:
        added = daemon.ctl(
            "resource", "add", resource, "--driver", "stateful", f"journal={journal}"
        )
        assert added.returncode == 0, added.stderr
    ports = {resource: bump(daemon, resource)["port"] for resource in RESOURCES}

    # An upgrade: same counters, same listening sockets, now served by 2.0.0.
    daemon.drop(stateful_bundle(staging, "2.0.0"))
    wait_for(lambda: only_version_running(daemon, "2.0.0"), 60, "2.0.0 alone")
    facts = bump(daemon, "r1")
    assert (facts["version"], facts["count"], facts["port"]) == ("2.0.0", 2, ports["r1"])
    assert facts["from_version"] == "1.0.0"
    assert ask(ports["r2"]) == "2.0.0 r2 2"

    # A property change: a new instance in the same process takes the state.
    changed = daemon.ctl("resource", "set", "r1", "label=blue")
    assert changed.returncode == 0, changed.stderr
    facts = bump(daemon, "r1")
    assert (facts["count"], facts["port"], facts["from_version"]) == (3, ports["r1"], "2.0.0")

    # A property change whose takeover fails: refused in one line, stored
    # back, and the old instance serves on with its state.
    refused = daemon.ctl("resource", "set", "r3", "fail_takeover_in=2.0.0")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "takeover of r3 configured to fail" in refused.stderr
    facts = bump(daemon, "r3")
    assert (facts["count"], facts["port"], facts["from_version"]) == (2, ports["r3"], "1.0.0")
    listed = json.loads(daemon.ctl("resources", "--json").stdout)
    assert [r["properties"] for r in listed if r["id"] == "r3"] == [{"journal": str(journal)}]

    # 3.0.0's takeover fails for r2: everything rolls back, the resources that
    # had moved are handed back (from 3.0.0), r2's old instance serves on.
    daemon.drop(stateful_bundle(staging, "3.0.0"))
    failed = [("2.0.0", "RUNNING"), ("3.0.0", "FAILED")]
    wait_for(lambda: version_states(daemon) == failed, 60, "3.0.0 FAILED")
    assert ask(ports["r2"]) == "2.0.0 r2 3"
    for resource, count in (("r1", 4), ("r3", 3)):
        facts = bump(daemon, resource)
        assert (facts["version"], facts["count"], facts["port"]) == (
            "2.0.0",
            count,
            ports[resource],
        )
        assert facts["from_version"] == "3.0.0"
    lines = journal.read_text().splitlines()
    assert "2.0.0 r2 handoff_aborted" in lines
    assert "3.0.0 r2 takeover 2.0.0" in lines
    assert "2.0.0 r1 takeover 3.0.0" in lines and "2.0.0 r3 takeover 3.0.0" in lines
    assert "2.0.0 r2 detach" not in lines

    # A version without takeover: attach, the state dropped, and the log says so.
    daemon.drop(stateful_bundle(staging, "4.0.0", "NoTakeover"))
    wait_for(lambda: only_version_running(daemon, "4.0.0"), 60, "4.0.0 alone")
    assert bump(daemon, "r1")["count"] == 1
    assert "stateful@4.0.0 has no takeover; the state r1 holds on stateful@2.0.0 is dropped" in (
        daemon.log()
    )
