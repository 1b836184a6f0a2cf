"""systemd's notify protocol: addresses, messages, the watchdog's interval,
and sending to real datagram sockets (abstract, missing, full)."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest

from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.notify import Notifier, format_message, socket_address, watchdog_interval
from drivebay.kernel.systemd import building, status_line


def test_addresses_abstract_path_or_none():
    assert socket_address("@sd-notify") == b"\0sd-notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("relative/notify") is None
    assert socket_address("vsock:2:1234") is None
    assert socket_address("@") is None


def test_a_message_is_one_line_per_field():
    assert format_message({"READY": 1, "STATUS": "2 running"}) == b"READY=1\nSTATUS=2 running\n"
    # A status cannot add a field of its own.
    assert format_message({"STATUS": "a\nREADY=1\r"}) == b"STATUS=a READY=1 \n"


def test_the_watchdog_interval_is_half_and_only_for_us():
    assert watchdog_interval({"WATCHDOG_USEC": "200000"}, 42) == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "42"}, 42) == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_the_variables_are_taken_out_of_the_environment():
    name = f"@drivebay-{uuid.uuid4().hex}"
    environ = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000", "PATH": "/bin"}
    notifier = Notifier.from_environment(environ)
    try:
        assert environ == {"PATH": "/bin"}  # nothing we spawn sees them
        assert notifier.address == b"\0" + name[1:].encode()
        assert notifier.watchdog_s == 0.1
    finally:
        notifier.close()
    nothing = Notifier.from_environment({})
    assert not nothing.enabled and not nothing.send(READY=1) and nothing.watchdog_s is None


def test_an_abstract_socket_receives_the_datagram():
    name = f"drivebay-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        notifier = Notifier(socket_address("@" + name))
        try:
            assert notifier.send(READY=1, STATUS="1 running")
        finally:
            notifier.close()
        receiver.settimeout(5)
        assert receiver.recv(100) == b"READY=1\nSTATUS=1 running\n"


def test_a_missing_or_full_socket_is_logged_once_and_never_blocks(tmp_path, caplog):
    missing = Notifier(str(tmp_path / "gone.sock"))
    try:
        with caplog.at_level(logging.WARNING, "drivebay.notify"):
            assert not missing.send(WATCHDOG=1)
            assert not missing.send(WATCHDOG=1)
    finally:
        missing.close()
    assert [r.getMessage() for r in caplog.records].count(
        "cannot notify systemd (No such file or directory); dropping its messages "
        "until it takes them again"
    ) == 1
    caplog.clear()
    path = str(tmp_path / "full.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)  # and never read: its queue fills
        full = Notifier(path)
        try:
            with caplog.at_level(logging.WARNING, "drivebay.notify"):
                sent = 0
                while full.send(WATCHDOG=1):
                    sent += 1
                    assert sent < 100_000, "the queue never filled"
                assert not full.send(WATCHDOG=1)  # and still returns at once
        finally:
            full.close()
    assert sent > 0
    assert len(caplog.records) == 1 and "Resource temporarily unavailable" in caplog.text


@pytest.mark.parametrize(
    ("states", "phase", "line"),
    [
        ([State.RUNNING] * 4 + [State.FATAL], "", "4 running, 1 fatal"),
        ([State.FATAL, State.RUNNING, State.STOPPED], "", "1 running, 1 stopped, 1 fatal"),
        ([], "", "no drivers"),
        ([State.BUILDING, State.STARTING], "starting", "starting: 1 building, 1 starting"),
    ],
)
def test_the_status_line_counts_driver_versions_by_state(states, phase, line):
    assert status_line(states, phase) == line


def test_more_time_is_asked_for_while_an_env_is_built():
    assert building([State.RUNNING, State.BUILDING])
    assert not building([State.STARTING, State.RUNNING])
