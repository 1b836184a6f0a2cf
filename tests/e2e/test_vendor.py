"""What a vendor writing a driver meets, through drivebayd and drivebayctl."""

from __future__ import annotations

from tests.e2e.harness import wait_for
from tests.e2e.test_resources import misbehave_bundle, ok

ESC = "\x1b[2J"


def test_an_operation_that_raises_is_logged_with_its_traceback(daemon, tmp_path):
    """The daemon log has the traceback (driver, version, resource, operation,
    escaped); ``call --verbose`` prints it on stderr; plain ``call`` keeps its line."""
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(misbehave_bundle(staging))
    daemon.wait_state("mis", "RUNNING")
    ok(daemon.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    plain = daemon.ctl("call", "v1", "fail", f"message=disk{ESC} on fire")
    assert plain.returncode == 1
    assert plain.stderr == "error: ValueError: disk\\x1b[2J on fire\n"
    verbose = daemon.ctl("call", "--verbose", "v1", "fail", f"message=disk{ESC} on fire")
    assert verbose.returncode == 1
    lines = verbose.stderr.splitlines()
    assert lines[0] == "error: ValueError: disk\\x1b[2J on fire"
    assert lines[1] == "Traceback (most recent call last):"
    assert "raise ValueError(message)" in verbose.stderr and ESC not in verbose.stderr
    assert lines[-1] == "ValueError: disk\\x1b[2J on fire"

    def logged() -> list[str]:
        return [line for line in daemon.log().splitlines() if "raised ValueError" in line]

    wait_for(lambda: len(logged()) == 2, what="both failures logged")
    assert "mis@1.0.0: fail on v1 raised ValueError: disk\\x1b[2J on fire" in logged()[0]
    log = daemon.log()
    assert "    Traceback (most recent call last):" in log
    assert "raise ValueError(message)" in log and ESC not in log


def test_an_unknown_driver_in_resource_add_gets_the_nearest_name(daemon, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(misbehave_bundle(staging))
    daemon.wait_state("mis", "RUNNING")
    typo = daemon.ctl("resource", "add", "v1", "--driver", "miss", "host=a")
    assert typo.returncode == 1
    assert typo.stderr.startswith("drivebayctl: driver miss is not installed (did you mean 'mis'?)")
    far = daemon.ctl("resource", "add", "v1", "--driver", "zzzz", "host=a")
    assert far.returncode == 1 and "did you mean" not in far.stderr
    assert far.stderr.startswith("drivebayctl: driver zzzz is not installed; drop its bundle")
