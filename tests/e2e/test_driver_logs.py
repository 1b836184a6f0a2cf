"""Driver log files under a real daemon: a log that cannot be written costs
the driver its log lines, never its stdout."""

from __future__ import annotations

import json

from tests.e2e.harness import wait_for
from tests.e2e.test_resources import mis_daemon, ok


def test_a_log_dir_that_cannot_be_written_drops_output_and_the_driver_keeps_printing(
    daemon_factory, tmp_path
):
    daemon = mis_daemon(daemon_factory, tmp_path, {"logs": {"max_bytes": 4096}})
    logs = daemon.state / "logs"
    stdout_log = logs / "mis@1.0.0.stdout.log"
    ok(daemon.ctl("call", "v1", "say", "text=before"))
    wait_for(lambda: b"before" in stdout_log.read_bytes(), what="the log written")
    aside = daemon.state / "logs-aside"
    logs.rename(aside)
    logs.write_text("")  # a file where the directory was: the next rotation fails
    big = "x" * 5000
    for text in (big, "during-1", "during-2"):  # each print works in the driver
        assert json.loads(ok(daemon.ctl("call", "v1", "say", f"text={text}")).stdout) is True
    wait_for(lambda: "cannot write this driver's output" in daemon.log(), what="the drop said")
    logs.unlink()
    aside.rename(logs)

    def written_again() -> bool:
        ok(daemon.ctl("call", "v1", "say", "text=after"))
        return stdout_log.exists() and b"after" in stdout_log.read_bytes()

    wait_for(written_again, what="writing again")
    said = [line for line in daemon.log().splitlines() if f"{stdout_log}: " in line]
    assert len(said) == 2, said
    assert "cannot write this driver's output (Not a directory)" in said[0]
    assert "driver output were dropped (Not a directory)" in said[1]
    assert b"during" not in stdout_log.read_bytes()
    assert daemon.status()["mis"]["restarts"] == 0
