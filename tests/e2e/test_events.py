"""The event stream end to end: a real daemon, a real driver, drivebayctl
events and status --watch as an operator runs them."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from tests.e2e.harness import BIN, Daemon
from tests.e2e.test_daemon import build


class Output:
    """What a running drivebayctl prints, read line by line with a deadline."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.buffer = b""
        self.seen: list[str] = []

    def line(self, check: Callable[[str], bool], deadline: float = 30.0) -> str:
        end = time.monotonic() + deadline
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                text = raw.decode()
                self.seen.append(text)
                if check(text):
                    return text
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such line within {deadline}s; saw {self.seen}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    raise AssertionError(f"output ended; saw {self.seen}")
                self.buffer += chunk

    def event(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return json.loads(self.line(lambda text: check(json.loads(text))))


def ctl(daemon: Daemon, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "drivebayctl"), "-s", str(daemon.socket), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


def ended(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=10)
    finally:
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def moved(to: str, **data: Any) -> Callable[[dict[str, Any]], bool]:
    def check(event: dict[str, Any]) -> bool:
        found = event["type"] == "driver.state" and event["data"]["to"] == to
        return found and all(event["data"].get(k) == v for k, v in data.items())

    return check


def test_events_from_a_bundle_a_kill_and_resources_to_a_restart_of_the_daemon(
    daemon: Daemon, tmp_path
):
    follow = ctl(daemon, "events", "-f", "--since", "0", "--json")
    watch = ctl(daemon, "status", "--watch")
    try:
        events, shown = Output(follow), Output(watch)
        shown.line(lambda text: text.startswith("drivebayctl status --watch"))
        daemon.drop(build(tmp_path, "alpha"))
        verified = events.event(lambda e: e["type"] == "bundle.verified")
        assert (verified["driver"], verified["version"]) == ("alpha", "1.0.0")
        assert verified["data"]["file"] == "alpha-1.0.0"
        events.event(moved("STARTING"))
        running = events.event(moved("RUNNING"))
        assert running["id"].split("-")[1].isdigit()
        shown.line(lambda text: text.startswith("alpha@1.0.0") and " RUNNING " in text)

        pid = daemon.wait_state("alpha", "RUNNING")["pid"]
        os.kill(pid, signal.SIGKILL)
        killed = events.event(lambda e: e["type"] == "driver.state" and "signal" in e["data"])
        assert killed["data"]["signal"] == 9 and killed["data"]["signal_name"] == "SIGKILL"
        assert killed["data"]["from"] == "RUNNING"
        assert events.event(lambda e: e["type"] == "driver.restart")["data"]["restarts"] == 1
        events.event(moved("RUNNING"))

        assert daemon.ctl("resource", "add", "r1", "--driver", "alpha").returncode == 0
        shown.line(lambda text: text.startswith("alpha@1.0.0") and text.endswith(", 1 resource"))
        added = events.event(lambda e: e["type"] == "resource.added")
        assert (added["resource"], added["driver"]) == ("r1", "alpha")
        audit = events.event(lambda e: e["type"] == "audit")
        assert audit["data"]["who"] == f"pid {audit['data']['who'].split()[1]} uid {os.geteuid()}"
        assert audit["data"]["what"] == "resource-add id='r1' driver='alpha'"
        assert audit["data"]["outcome"] == "ok"

        daemon.drop(build(tmp_path, "alpha", version="1.1.0"))  # an upgrade moves r1
        began = events.event(lambda e: e["type"] == "upgrade.started")
        assert (began["version"], began["data"]["from"]) == ("1.1.0", "1.0.0")
        assert began["data"]["resources"] == 1
        assert events.event(lambda e: e["type"] == "upgrade.switched")["data"]["moved"] == 1
        done = events.event(lambda e: e["type"] == "upgrade.finished")
        assert (done["version"], done["data"]["old_state"]) == ("1.1.0", "STOPPED")

        assert daemon.ctl("resource", "rm", "r1").returncode == 0
        events.event(lambda e: e["type"] == "resource.removed" and e["resource"] == "r1")
        shown.line(lambda text: text.startswith("alpha@1.1.0") and text.endswith(", 0 resources"))
        assert ended(watch, signal.SIGINT) == 0  # Ctrl-C
    finally:
        ended(follow)
        ended(watch)

    listed = daemon.ctl("events", "--json")
    assert listed.returncode == 0, listed.stderr
    held = json.loads(listed.stdout)
    seen = [json.loads(line)["id"] for line in events.seen]
    assert [e["id"] for e in held][: len(seen)] == seen
    last = daemon.ctl("events", "-n", "2")
    assert len(last.stdout.splitlines()) == 2 and "resource.removed" in last.stdout
    before = held[-1]["id"]

    daemon.stop()
    daemon.start()
    after = daemon.ctl("events", "--since", before, "--json")
    assert after.returncode == 0, after.stderr
    gap = json.loads(after.stdout)[0]
    assert gap["type"] == "gap" and gap["id"] is None
    assert "another run of drivebayd" in gap["data"]["reason"]
    text = daemon.ctl("events", "--since", before).stdout
    assert text.splitlines()[0].split()[3] == "gap"
    bad = daemon.ctl("events", "--since", "yesterday")
    assert bad.returncode == 2 and "is not an event id" in bad.stderr
