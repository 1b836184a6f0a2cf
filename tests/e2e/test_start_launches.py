"""Warm spares are launched only after the start waves: a real daemon, real
drivers in three waves, the order read from the event ring (every
``driver.spare`` after every first ``RUNNING``), not from a clock."""

from __future__ import annotations

import json
import os
import signal

from tests.e2e.harness import wait_for
from tests.e2e.test_daemon import build

DRIVERS = [  # three waves: network, then store-a, then store-b and plain
    ("net", "network", []),
    ("store-a", "storage", []),
    ("store-b", "storage", ["store-a"]),
    ("plain", "other", []),
]


def test_spares_are_launched_only_after_the_start_waves(daemon_factory, tmp_path):
    daemon = daemon_factory()
    for name, category, requires in DRIVERS:
        extra = {"category": category, "requires": requires}
        daemon.drop(build(tmp_path, name, manifest_extra=extra))
    daemon.start()

    def spared() -> dict:
        status = daemon.status()
        ready = len(status) == len(DRIVERS) and all(row["spare_pid"] for row in status.values())
        return status if ready else {}

    status = wait_for(spared, 60, "every driver RUNNING with its spare")
    listed = daemon.ctl("events", "--since", "0", "--json")
    assert listed.returncode == 0, listed.stderr
    events = json.loads(listed.stdout)
    running = [
        i
        for i, e in enumerate(events)
        if e["type"] == "driver.state" and e["data"]["to"] == "RUNNING"
    ]
    spares = [i for i, e in enumerate(events) if e["type"] == "driver.spare"]
    assert len(running) == len(DRIVERS) and len(spares) == len(DRIVERS), events
    assert max(running) < min(spares), [(e["type"], e["driver"], e["data"]) for e in events]
    pids = {e["driver"]: e["data"]["pid"] for i, e in enumerate(events) if i in spares}
    assert pids == {name: row["spare_pid"] for name, row in status.items()}

    # A restart takes the spare; its next spare is launched once it runs again.
    os.kill(status["plain"]["pid"], signal.SIGKILL)
    wait_for(
        lambda: daemon.status()["plain"]["spare_pid"] not in (None, status["plain"]["spare_pid"]),
        30,
        "plain RUNNING again with a new spare",
    )
    after = json.loads(daemon.ctl("events", "--since", events[-1]["id"], "--json").stdout)
    order = [
        "spare" if e["type"] == "driver.spare" else e["data"]["to"]
        for e in after
        if e["driver"] == "plain" and e["type"] in ("driver.state", "driver.spare")
    ]
    assert order[-2:] == ["RUNNING", "spare"], order
