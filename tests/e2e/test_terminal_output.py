"""drivebayctl's human output never passes a bundle's or a driver's control
characters to the operator's terminal: real daemon, hostile bundles."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.e2e.harness import BIN, Daemon, wait_for
from tests.sandbox.bundles import make_bundle

# Clear the screen, set the window title, a C1 CSI, a bell, a forged line.
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\rfake@1.0.0 RUNNING"
RAW = ("\x1b", "\x07", "\x9b", "\r")


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """drivebayctl's output decoded as is (no newline translation: a raw CR shows)."""
    result = subprocess.run(
        [str(BIN / "drivebayctl"), "-s", str(daemon.socket), *args],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def assert_clean(text: str) -> None:
    found = [c for c in RAW if c in text]
    assert not found, f"raw control characters {found!r} in {text!r}"


def test_names_and_descriptions_are_escaped(daemon, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    good = make_bundle(staging, name="glint", manifest_extra={"description": "say" + HOSTILE})
    daemon.drop(good.rename(staging / ("glint" + HOSTILE)))
    broken = make_bundle(staging, name="broken")
    (broken / "driver.yaml").unlink()
    daemon.drop(broken.rename(staging / ("broken" + HOSTILE)))
    daemon.wait_state("glint", "RUNNING")
    wait_for(lambda: ("broken" + HOSTILE) in daemon.status(), what="the broken bundle INVALID")

    for args in (("status",), ("avail",), ("describe", "glint")):
        result = ctl(daemon, *args)
        assert result.returncode in (0, 3), result.stderr
        assert_clean(result.stdout)
        assert_clean(result.stderr)
        assert "\\x1b[2J" in result.stdout, result.stdout  # shown, escaped
    # JSON keeps the exact strings (JSON escapes them itself).
    avail = json.loads(ctl(daemon, "avail", "--json").stdout)
    assert {row["file"] for row in avail} == {"glint" + HOSTILE, "broken" + HOSTILE}
    assert_clean(ctl(daemon, "avail", "--json").stdout)
    described = json.loads(ctl(daemon, "describe", "glint", "--json").stdout)
    assert described["description"] == "say" + HOSTILE


def test_a_driver_error_is_escaped(daemon, tmp_path: Path) -> None:
    source = f"""
class ShoutDriver:
    def __init__(self, resource_id, properties):
        pass

    async def shout(self):
        raise ValueError({HOSTILE!r})

    async def ok(self):
        return {HOSTILE!r}
"""
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(make_bundle(staging, name="shout", src={"shout.py": source}))
    daemon.wait_state("shout", "RUNNING")
    assert ctl(daemon, "resource", "add", "s1", "--driver", "shout").returncode == 0
    failed = ctl(daemon, "call", "s1", "shout")
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: ValueError: \\x1b[2J"), failed.stderr
    assert_clean(failed.stderr)
    assert_clean(ctl(daemon, "call", "s1", "ok").stdout)  # JSON


def test_tail_is_raw_when_piped(daemon, tmp_path: Path) -> None:
    """A pipe gets the log's bytes as written (for grep, less -R); a terminal
    gets them escaped (checked in tests/kernel/test_ctl_rendering.py)."""
    source = f"""
class LogDriver:
    def __init__(self, resource_id, properties):
        pass

    async def say(self):
        print({HOSTILE!r}, flush=True)
"""
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(make_bundle(staging, name="log", src={"log.py": source}))
    daemon.wait_state("log", "RUNNING")
    assert ctl(daemon, "resource", "add", "l1", "--driver", "log").returncode == 0
    assert ctl(daemon, "call", "l1", "say").returncode == 0
    wait_for(lambda: ctl(daemon, "tail", "log").stdout == HOSTILE + "\n", what="the raw tail")
