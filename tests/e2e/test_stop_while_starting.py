"""``drivebayctl stop all`` while thirty drivers are starting: a real daemon.

The drivers' module waits, as it is imported, for a file the test makes
only after the stop: so every driver is STARTING when the stop comes, a few
admitted by the launch gate (importing), the others waiting their turn;
the stop abandons them all at once (it does not wait out their starts).

It returns; every driver ends STOPPED; no process is left below drivebayd
but its templates; and the launch gate holds no place afterwards: a
following ``start all`` brings every driver to RUNNING with its warm spare
(a spare is admitted only while no start runs or waits, so a place a stopped
start kept would hold every spare back).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.e2e.harness import FAST_CONFIG, templates_of, wait_for
from tests.helpers import children_of
from tests.sandbox.bundles import driver_source, make_bundle

DRIVERS = 30
HELD = """
import os as _os
import time as _time

while not _os.path.exists({release!r}):  # held at import until the test lets it go
    _time.sleep(0.01)
"""


def held_bundle(staging: Path, name: str, release: Path) -> Path:
    module = HELD.format(release=str(release)) + driver_source(name.title() + "Driver")
    return make_bundle(staging, name=name, src={f"{name}.py": module})


def test_stop_all_while_thirty_start(daemon_factory, tmp_path):
    # A start is never waited out: the stop must abandon the held starts
    # (without that it would wait for their handshakes, up to start_s).
    daemon = daemon_factory(config={"timeouts": {**FAST_CONFIG["timeouts"], "start_s": 300}})
    release = tmp_path / "release"
    staging = tmp_path / "staging"
    staging.mkdir()
    for n in range(DRIVERS):
        daemon.drop(held_bundle(staging, f"d{n:02}", release))
    daemon.start()
    assert daemon.process is not None
    pid = daemon.process.pid

    def all_starting() -> bool:
        rows = daemon.status().values()
        return len(rows) == DRIVERS and all(row["state"] == "STARTING" for row in rows)

    wait_for(all_starting, 30, "every driver STARTING")
    stopped = daemon.ctl("stop", "all", timeout=30)
    assert stopped.returncode == 0, (stopped.stdout, stopped.stderr)

    def all_stopped() -> bool:
        rows = daemon.status().values()
        return len(rows) == DRIVERS and all(row["state"] == "STOPPED" for row in rows)

    wait_for(all_stopped, 30, "every driver STOPPED")
    assert all(row["pid"] is None for row in daemon.status().values())
    wait_for(
        lambda: set(children_of(pid)) <= set(templates_of(pid)),
        30,
        "no process below the daemon but its templates",
    )

    release.touch()
    started = daemon.ctl("start", "all", timeout=60)
    assert started.returncode == 0, (started.stdout, started.stderr)

    def all_spared() -> bool:
        rows = daemon.status().values()
        return len(rows) == DRIVERS and all(
            row["state"] == "RUNNING" and row["spare_pid"] for row in rows
        )

    wait_for(all_spared, 60, "every driver RUNNING with its spare")
    assert "Traceback" not in daemon.log()


def test_stop_while_a_taken_spare_loads_the_driver(daemon_factory, tmp_path):
    """A restart takes the warm spare, which then imports the driver (held):
    a stop abandons that start too."""
    daemon = daemon_factory(config={"timeouts": {**FAST_CONFIG["timeouts"], "start_s": 300}})
    release = tmp_path / "release"
    release.touch()
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(held_bundle(staging, "d00", release))
    daemon.start()
    assert daemon.process is not None
    pid = daemon.process.pid
    row = wait_for(
        lambda: (r := daemon.status().get("d00")) and r["spare_pid"] and r,
        60,
        "d00 RUNNING with its spare",
    )
    release.unlink()
    os.kill(row["pid"], signal.SIGKILL)
    wait_for(
        lambda: (
            (r := daemon.status()["d00"])["state"] == "STARTING" and r["pid"] == row["spare_pid"]
        ),
        30,
        "d00 STARTING in its former spare",
    )
    stopped = daemon.ctl("stop", "d00", timeout=30)
    assert (stopped.returncode, stopped.stdout) == (0, "d00@1.0.0: stopped\n"), stopped.stderr
    assert daemon.status()["d00"]["state"] == "STOPPED"
    wait_for(
        lambda: set(children_of(pid)) <= set(templates_of(pid)),
        30,
        "no process below the daemon but its templates",
    )
