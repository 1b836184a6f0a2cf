"""drivebayd under systemd's ``Type=notify``: a real datagram socket as
``$NOTIFY_SOCKET``, a real daemon, real drivers; and its JSON log lines."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.e2e.harness import wait_for
from tests.e2e.test_resources import misbehave_bundle, ok
from tests.sandbox.bundles import make_bundle, zip_bundle

ESC = "\x1b[2J"
Message = dict[str, str]


class NotifySocket:
    """The service manager's end: every datagram drivebayd sends, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received: list[Message] = []

    def wait(self, wanted: Callable[[Message], bool], what: str, deadline: float = 30) -> Message:
        """The first message (seen before or arriving) that is ``wanted``."""
        seen = 0
        end = time.monotonic() + deadline
        while True:
            for message in self.received[seen:]:
                if wanted(message):
                    return message
            seen = len(self.received)
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what} not sent within {deadline}s: {self.received}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            lines = data.decode().splitlines()
            self.received.append(dict(line.split("=", 1) for line in lines))


@contextmanager
def notify_socket(address: str) -> Iterator[NotifySocket]:
    """A datagram socket bound at ``address`` (``@name``: abstract)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + address[1:] if address.startswith("@") else address)
        yield NotifySocket(sock)
    finally:
        sock.close()


def test_ready_status_watchdog_and_stopping_reach_the_notify_socket(daemon_factory, tmp_path):
    daemon = daemon_factory()
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in ("alpha", "beta"):  # there before the daemon: in its start waves
        daemon.drop(zip_bundle(make_bundle(staging, name=name)))
    path = str(tmp_path / "notify.sock")
    with notify_socket(path) as notify:
        daemon.start(wait=False, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        ready = notify.wait(lambda m: "READY" in m, "READY=1")
        # Sent once the start waves had settled: both drivers were running.
        assert ready == {"READY": "1", "STATUS": "2 running"}, daemon.log()
        before = notify.received.index(ready)
        for early in notify.received[:before]:  # pings, more time for a build, status
            assert {"WATCHDOG", "EXTEND_TIMEOUT_USEC"} & set(early) or early["STATUS"].startswith(
                "starting: "
            ), early

        def pings() -> int:
            return sum("WATCHDOG" in m for m in notify.received[before:])

        # One every 100 ms (half of WATCHDOG_USEC), also after READY.
        notify.wait(lambda m: "WATCHDOG" in m and pings() >= 3, "3 watchdog pings")
        ok(daemon.ctl("stop", "alpha"))
        notify.wait(lambda m: m.get("STATUS") == "1 running, 1 stopped", "STATUS after a stop")
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        stopping = notify.wait(lambda m: "STOPPING" in m, "STOPPING=1")
        assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("stopping: ")
        assert daemon.process.wait(timeout=30) == 0
    assert "cannot notify systemd" not in daemon.log()


def test_json_log_lines_carry_driver_fields_and_no_raw_control_character(daemon_factory, tmp_path):
    daemon = daemon_factory()
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(zip_bundle(misbehave_bundle(staging)))
    address = f"@drivebay-test-{uuid.uuid4().hex}"  # an abstract name
    with notify_socket(address) as notify:
        daemon.start(wait=False, args=("--log-format", "json"), env={"NOTIFY_SOCKET": address})
        assert notify.wait(lambda m: "READY" in m, "READY=1")["STATUS"] == "1 running"
        ok(daemon.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
        ok(daemon.ctl("call", "v1", "say", f"text=hi{ESC}"))
        assert daemon.ctl("call", "v1", "fail", f"message=disk{ESC} on fire").returncode == 1

        def records() -> list[dict[str, object]]:
            text = daemon.log()
            whole = text[: text.rfind("\n") + 1]  # not a line being written
            return [json.loads(line) for line in whole.splitlines()]

        failed = wait_for(
            lambda: [r for r in records() if r.get("event") == "operation_failed"],
            what="the failure logged",
        )[0]
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        notify.wait(lambda m: "STOPPING" in m, "STOPPING=1")
        assert daemon.process.wait(timeout=30) == 0
    assert failed["level"] == "WARNING" and failed["logger"] == "drivebay.actor"
    assert (failed["driver"], failed["version"], failed["resource"]) == ("mis", "1.0.0", "v1")
    assert failed["operation"] == "fail"
    assert str(failed["message"]).startswith("mis@1.0.0: fail on v1 raised ValueError: disk")
    every = records()
    assert all({"time", "level", "logger", "message"} <= set(r) for r in every)
    up = [r for r in every if r.get("event") == "up"]
    assert up and (up[0]["driver"], up[0]["version"], up[0]["state"]) == ("mis", "1.0.0", "RUNNING")
    said = [r for r in every if r.get("event") == "driver_log"]
    assert said and said[0]["driver"] == "mis" and "logged: hi" in str(said[0]["message"])
    raw = daemon.log_path.read_bytes()
    assert not any(byte < 0x20 and byte != 0x0A for byte in raw), "a raw control character"
    assert ESC.encode() not in raw


def test_nothing_is_sent_and_nothing_breaks_without_a_listener(daemon_factory, tmp_path):
    """A NOTIFY_SOCKET nobody listens on is logged once; the daemon serves on."""
    daemon = daemon_factory()
    path = str(tmp_path / "nobody.sock")
    daemon.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    wait_for(lambda: "cannot notify systemd" in daemon.log(), what="the failure logged")
    assert daemon.ctl("status").returncode == 0
    assert daemon.stop() == 0
    assert daemon.log().count("cannot notify systemd") == 1


def test_start_up_asks_for_more_time_while_an_env_is_built(daemon_factory, tmp_path):
    daemon = daemon_factory(config={"envs_dir": str(tmp_path / "own-envs")})  # nothing built
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(zip_bundle(make_bundle(staging, name="alpha")))
    address = f"@drivebay-test-{uuid.uuid4().hex}"
    with notify_socket(address) as notify:
        daemon.start(wait=False, env={"NOTIFY_SOCKET": address})
        ready = notify.wait(lambda m: "READY" in m, "READY=1")
        assert ready["STATUS"] == "1 running", daemon.log()
        early = notify.received[: notify.received.index(ready)]
        assert {"EXTEND_TIMEOUT_USEC": "30000000"} in early, early
        assert any(m.get("STATUS") == "starting: 1 building" for m in early), early
