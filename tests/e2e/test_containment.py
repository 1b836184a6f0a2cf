"""Against a real drivebayd: nothing a driver started (``setsid``, a double
fork) outlives the driver's crash, a clean daemon stop, or ``kill -9`` of the
daemon."""

from __future__ import annotations

import os
import signal

from tests.e2e.harness import pid_alive, wait_for
from tests.e2e.test_resources import misbehave_bundle, ok
from tests.helpers import SPAWN_MODES
from tests.sandbox.test_containment import descendants, marked, marker

__all__ = ["marker"]  # the fixture


def escapees(daemon, marker: str) -> None:  # type: ignore[no-untyped-def]
    ok(daemon.ctl("call", "v1", "escapees", f"marker={marker}"))
    wait_for(lambda: len(marked(marker)) == 2, what="escapees running")


@SPAWN_MODES
def test_no_descendant_outlives_its_driver_or_the_daemon(daemon_factory, tmp_path, marker, spawn):
    daemon = daemon_factory(config={"spawn": spawn})
    daemon.start()
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(misbehave_bundle(staging))
    driver = daemon.wait_state("mis", "RUNNING")["pid"]
    assert "containment: each driver in a PID namespace of its own" in daemon.log()
    ok(daemon.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))

    escapees(daemon, f"{marker}-crash")
    os.kill(driver, signal.SIGKILL)
    wait_for(lambda: not marked(f"{marker}-crash"), what="escapees of the crashed driver gone")
    wait_for(lambda: daemon.status()["mis"]["pid"] not in (None, driver), what="restarted")

    escapees(daemon, f"{marker}-stop")
    assert daemon.stop() == 0
    wait_for(lambda: not marked(f"{marker}-stop"), what="escapees gone after a stop")

    daemon.start()
    driver = daemon.wait_state("mis", "RUNNING")["pid"]
    escapees(daemon, f"{marker}-kill")
    assert daemon.process is not None
    below = descendants(daemon.process.pid)  # drivers, spares, inits (forked: the template)
    assert driver in below
    daemon.process.kill()
    daemon.process.wait()
    wait_for(
        lambda: not marked(f"{marker}-kill") and not pid_alive(driver),
        what="driver and escapees gone after kill -9 of the daemon",
    )
    wait_for(lambda: not any(map(pid_alive, below)), what="every process below it gone")
