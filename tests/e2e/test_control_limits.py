"""The control socket under abuse, and the descriptor limit: a real daemon,
raw sockets, real drivers."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import closing
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path
from typing import Any

import pytest

from drivebay.client import AsyncClient, Client, DrivebayError, OperationError
from drivebay.client._sync import encode_request
from drivebay.kernel.control.limits import stalled
from drivebay.protocol.frames import HEADER, FrameSplitter
from drivebay.protocol.msgpack_lite import unpackb
from tests.e2e.harness import BIN, Daemon, templates_of, wait_for
from tests.e2e.test_http_api import UnixHttp, free_port, make_certificates
from tests.helpers import run
from tests.sandbox.bundles import make_bundle

MIB = 1024 * 1024


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Raw:
    """One raw connection to the control socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.frames = FrameSplitter("drivebayd")

    def send(self, data: bytes) -> bool:
        """False when the daemon closed the connection meanwhile."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def replies(self) -> list[dict[str, Any]]:
        """Every reply until the daemon closes the connection."""
        got: list[dict[str, Any]] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                return got
            got.extend(unpackb(raw) for raw in self.frames.feed(data))

    def some_replies(self) -> list[dict[str, Any]]:
        """The replies of one read (at least one byte)."""
        data = self.sock.recv(1 << 16)
        assert data, "the daemon closed a connection it had accepted"
        return [unpackb(raw) for raw in self.frames.feed(data)]

    def status(self) -> dict[str, Any]:
        """Ask for status on this connection; its reply."""
        self.sock.sendall(encode_request(1, "status", {"names": []}))
        while True:
            data = self.sock.recv(1 << 16)
            assert data, "the daemon closed a connection it had accepted"
            frames = self.frames.feed(data)
            if frames:
                reply: dict[str, Any] = unpackb(frames[0])
                return reply

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_connections(path: Path) -> Iterator[list[Raw]]:
    opened: list[Raw] = []
    try:
        yield opened
    finally:
        for raw in opened:
            raw.close()


def status_answers(daemon: Daemon) -> bool:
    return daemon.ctl("status").returncode in (0, 3)


def test_big_incomplete_requests_are_refused_from_their_length_prefix(daemon):
    """Twenty clients each announce a 16 MiB request and send all of it but
    the last bytes: the shared budget takes a few, the rest are refused from
    their prefix, and the daemon's memory stays bounded."""
    assert daemon.process is not None
    pid = daemon.process.pid
    before = rss_kb(pid)
    size = 16 * MIB - 64
    body = b"\x00" * (size - 16)
    with raw_connections(daemon.socket) as clients:
        for _ in range(20):
            client = Raw(daemon.socket)
            clients.append(client)
            client.send(HEADER.pack(size) + body)
        assert status_answers(daemon)
        grown_mib = (rss_kb(pid) - before) / 1024
        assert grown_mib < 160, f"the daemon grew by {grown_mib:.0f} MiB"
        refused = [reply for c in clients[-4:] for reply in c.replies()]
        assert refused and all("control.request_buffer_mb" in r["error"] for r in refused)
    huge = Raw(daemon.socket)
    try:
        huge.send(HEADER.pack(0xFFFFFFF0) + b"\x00" * 1024)
        (reply,) = huge.replies()
    finally:
        huge.close()
    assert "over the limit of 16777216 bytes" in reply["error"]
    assert status_answers(daemon)
    assert "Traceback" not in daemon.log()


def test_a_stalled_request_is_disconnected(daemon_factory):
    daemon = daemon_factory(config={"timeouts": {"request_s": 0.5}})
    daemon.start()
    with raw_connections(daemon.socket) as clients:
        idle = Raw(daemon.socket)
        clients.append(idle)
        assert idle.status()["ok"]
        stalled = Raw(daemon.socket)
        clients.append(stalled)
        stalled.send(HEADER.pack(100) + b"\x92partial")
        (reply,) = stalled.replies()  # returns once the daemon closed it
        assert reply["error"] == (
            "request incomplete after 0.5s (timeouts.request_s); closing: send each request whole"
        )
        # An idle connection is not a stalled one: it still works afterwards.
        assert idle.status()["ok"]
    assert status_answers(daemon)
    assert "Traceback" not in daemon.log()


def test_connections_beyond_the_cap_are_refused_with_one_line(daemon_factory):
    daemon = daemon_factory(config={"control": {"max_connections": 4}})
    daemon.start()
    with raw_connections(daemon.socket) as clients:
        for _ in range(4):
            clients.append(Raw(daemon.socket))
        assert all(client.status()["ok"] for client in clients)  # all four admitted
        refused = daemon.ctl("status")
        assert (refused.returncode, refused.stdout, refused.stderr) == (
            1,
            "",
            "drivebayctl: drivebayd has 4 client connections open (control socket and HTTP "
            "API together: control.max_connections); close idle clients or raise "
            "control.max_connections\n",
        )
        assert daemon.ctl("version").returncode == 1
        assert refused_to_a_program(daemon.socket) == refused.stderr[len("drivebayctl: ") : -1]
        assert clients[0].status()["ok"]  # the open ones still work
        clients.pop().close()
        wait_for(lambda: status_answers(daemon), what="a connection freed")
    log = daemon.log()
    assert log.count("control connections at the limit") == 1
    assert "accepting control connections again (3 refused)" in log


def refused_to_a_program(path: Path) -> str:
    """What ``AsyncClient`` raises when its connection is refused."""

    async def attempt() -> str:
        client = await AsyncClient.connect(str(path))
        try:
            await client.request("status")
        except OperationError as exc:
            assert exc.code == 1
            return str(exc)
        finally:
            await client.close()
        raise AssertionError("a connection over the cap was served")

    return run(attempt())


def start_limited(daemon: Daemon, soft: int, hard: int) -> None:
    """Start ``daemon`` with RLIMIT_NOFILE (soft, hard), as systemd's LimitNOFILE does."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with open(daemon.log_path, "ab") as log:
        daemon.process = subprocess.Popen(
            [str(BIN / "drivebayd"), "--config", str(daemon.config_path)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=limit,
        )
    wait_for(lambda: daemon.ctl("version").returncode == 0, what="daemon answering")


def drop_tiny_drivers(daemon: Daemon, tmp_path: Path, count: int) -> list[str]:
    """``count`` bundles of one tiny driver (no dependencies: one shared env)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    names = [f"tiny-{n:03d}" for n in range(count)]
    for name in names:
        make_bundle(staging, name=name)
    for bundle in sorted(staging.iterdir()):
        daemon.drop(bundle)
    return names


def states(daemon: Daemon) -> dict[str, str]:
    return {name: row["state"] for name, row in daemon.status().items()}


def test_a_hundred_drivers_under_a_soft_limit_of_1024(daemon_factory, tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= 2048, f"hard nofile limit {hard}"
    hard = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    daemon = daemon_factory()
    start_limited(daemon, 1024, hard)
    assert daemon.process is not None
    idle_fds = fd_count(daemon.process.pid)
    names = drop_tiny_drivers(daemon, tmp_path, 100)

    def all_running_with_spares() -> bool:
        rows = daemon.status()
        return len(rows) == 100 and all(
            row["state"] == "RUNNING" and row["spare_pid"] for row in rows.values()
        )

    wait_for(all_running_with_spares, deadline=110, what="100 drivers RUNNING with spares")
    assert sorted(daemon.status()) == names
    log = daemon.log()
    assert f"raised the soft descriptor limit (RLIMIT_NOFILE) from 1024 to {hard}" in log
    assert "internal error" not in log and "FATAL" not in log and "FAILED" not in log
    # The measured cost of a driver version with its spare is what the budget assumes
    # (an env's template holds 2, its control socket and pidfd: from the reserve).
    templates = 2 * len(templates_of(daemon.process.pid))
    per_driver = (fd_count(daemon.process.pid) - idle_fds - templates) / 100
    assert per_driver <= 12, f"{per_driver} descriptors per driver version"


def test_drivers_beyond_a_hard_limit_stay_stopped_saying_why(daemon_factory, tmp_path):
    # A driver's own limit must fit under the daemon's hard one (it cannot raise it).
    daemon = daemon_factory(config={"limits": {"open_files": 128}})
    start_limited(daemon, 1024, 1024)  # soft and hard both at 1,024
    log = daemon.log()
    assert (
        "descriptor limit 1024 (RLIMIT_NOFILE): room for 70 driver versions "
        "(12 descriptors each) and 120 control connections; raise LimitNOFILE for more"
    ) in log
    drop_tiny_drivers(daemon, tmp_path, 80)
    reason = (
        "not started: the descriptor limit 1024 (RLIMIT_NOFILE) allows 70 driver versions; "
        "raise LimitNOFILE (or the hard nofile limit of drivebayd's user) and restart drivebayd"
    )

    def settled() -> dict[str, str] | None:
        now = states(daemon)
        counts = sorted(now.values())
        return now if len(now) == 80 and counts == ["RUNNING"] * 70 + ["STOPPED"] * 10 else None

    wait_for(settled, deadline=110, what="70 RUNNING and 10 STOPPED")
    rows = daemon.status()
    stopped = sorted(name for name, row in rows.items() if row["state"] == "STOPPED")
    assert all(rows[name]["message"] == reason for name in stopped)
    described = daemon.ctl("describe", stopped[0])
    assert reason in described.stdout
    text = daemon.ctl("status", stopped[0])
    assert text.returncode == 3 and reason in text.stdout
    started = daemon.ctl("start", stopped[0])
    assert (started.returncode, started.stdout) == (1, f"{stopped[0]}@1.0.0: ERROR ({reason})\n")
    # A place freed (an operator stops a running one): a waiting one takes it.
    running = sorted(name for name, row in rows.items() if row["state"] == "RUNNING")
    assert daemon.ctl("stop", running[0]).returncode == 0
    wait_for(
        lambda: sorted(states(daemon).values()).count("RUNNING") == 70,
        what="a waiting driver started in the freed place",
    )
    assert "internal error" not in daemon.log()


SAYER = """
class SayerDriver:
    def __init__(self, resource_id, properties):
        pass

    async def say(self, text):
        print(text, flush=True)
"""


def test_a_refused_client_is_sent_nothing_after_its_line(daemon_factory, tmp_path):
    """A client refused (here: for a stalled request) while it follows a log
    gets the line and the end of the stream; what the driver writes later
    goes nowhere, and nothing fails in the daemon."""
    daemon = daemon_factory(config={"timeouts": {"request_s": 0.2}})
    daemon.start()
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(make_bundle(staging, name="sayer", src={"sayer.py": SAYER}))
    daemon.wait_state("sayer", "RUNNING")
    assert daemon.ctl("resource", "add", "s1", "--driver", "sayer").returncode == 0
    with raw_connections(daemon.socket) as clients:
        follower = Raw(daemon.socket)
        clients.append(follower)
        follow = {"name": "sayer", "stream": "stdout", "lines": 0}
        follower.sock.sendall(encode_request(1, "tail-follow", follow))
        assert daemon.ctl("call", "s1", "say", "text=before").returncode == 0
        wait_for(
            lambda: any(reply["result"] == "before\n" for reply in follower.some_replies()),
            what="the followed line",
        )
        follower.send(HEADER.pack(100) + b"\x92part")
        assert [reply["error"] for reply in follower.replies()] == [stalled(0.2)]
        assert daemon.ctl("call", "s1", "say", "text=after").returncode == 0
    log = daemon.log()
    assert "Traceback" not in log and "failed" not in log, log


def test_a_client_that_does_not_read_its_replies_is_not_read_from(daemon):
    """Replies it leaves unread stop the daemon reading its requests (they
    would pile up in the daemon); everyone else is served meanwhile."""
    assert daemon.process is not None
    pid = daemon.process.pid
    before = rss_kb(pid)
    request = encode_request(1, "version", {}) * 1000
    with raw_connections(daemon.socket) as clients:
        greedy = Raw(daemon.socket)
        clients.append(greedy)
        greedy.sock.settimeout(2)  # blocked that long: the daemon stopped reading
        sent = 0
        with contextlib.suppress(TimeoutError):
            while sent < 32 * MIB:
                greedy.sock.sendall(request)
                sent += len(request)
        assert sent < 32 * MIB, "the daemon kept reading requests whose replies nobody read"
        assert status_answers(daemon)
        grown_mib = (rss_kb(pid) - before) / 1024
        assert grown_mib < 64, f"the daemon grew by {grown_mib:.0f} MiB"


def http_get(connection: HTTPConnection, target: str) -> tuple[int, Any]:
    connection.request("GET", target)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_http_connections_count_against_the_same_cap(daemon_factory):
    """Two control connections and two HTTP keep-alive connections (Unix and
    TCP) fill a cap of four: one more of any kind is refused, over HTTP as a
    503 problem naming what to raise; a freed HTTP connection admits again."""
    port = free_port()
    config = {"control": {"max_connections": 4}, "http": {"listen": f"127.0.0.1:{port}"}}
    daemon = daemon_factory(config=config)
    daemon.start()
    http_sock = str(daemon.state / "http.sock")
    line = (
        "drivebayd has 4 client connections open (control socket and HTTP API together: "
        "control.max_connections); close idle clients or raise control.max_connections"
    )
    with raw_connections(daemon.socket) as clients, contextlib.ExitStack() as held:
        for _ in range(2):
            clients.append(Raw(daemon.socket))
        assert all(client.status()["ok"] for client in clients)
        unix = held.enter_context(closing(UnixHttp(http_sock)))
        tcp = held.enter_context(closing(HTTPConnection("127.0.0.1", port, timeout=30)))
        assert http_get(unix, "/v1/version")[0] == 200  # admitted, and kept open
        assert http_get(tcp, "/v1/version")[0] == 401  # admitted (no token), kept open

        for extra in (UnixHttp(http_sock), HTTPConnection("127.0.0.1", port, timeout=30)):
            with closing(extra):
                extra.request("GET", "/v1/version")
                response = extra.getresponse()
                problem = json.loads(response.read())
            assert response.status == 503
            assert response.getheader("Content-Type") == "application/problem+json"
            assert response.getheader("Retry-After") == "1"
            assert (problem["type"], problem["detail"]) == ("TooManyConnections", line)
        refused = daemon.ctl("status")
        assert (refused.returncode, refused.stderr) == (1, f"drivebayctl: {line}\n")

        assert http_get(unix, "/v1/version")[0] == 200  # the open ones still work
        assert clients[0].status()["ok"]
        unix.close()  # one freed: HTTP and the control socket are admitted again
        wait_for(lambda: status_answers(daemon), what="a connection freed")
        with closing(UnixHttp(http_sock)) as again:
            assert http_get(again, "/v1/version")[0] == 200
    log = daemon.log()
    assert log.count("http connections at the limit") == 1
    assert "accepting http connections again (2 refused)" in log


def test_a_tls_connection_over_the_cap_reads_its_503(daemon_factory, tmp_path):
    """Over TLS the daemon cannot half-close: it answers after the handshake
    and waits for the client to close; the client reads the whole 503."""
    files = make_certificates(tmp_path)
    port = free_port()
    tls = {"cert": files["server.pem"], "key": files["server.key"]}
    listen = {"listen": f"127.0.0.1:{port}", "tls": tls}
    daemon = daemon_factory(config={"control": {"max_connections": 1}, "http": listen})
    daemon.start()
    trusted = ssl.create_default_context(cafile=files["ca.pem"])
    with raw_connections(daemon.socket) as clients:
        clients.append(Raw(daemon.socket))
        assert clients[0].status()["ok"]  # the one place is taken
        for _ in range(3):  # and again: the refused ones are closed, nothing held
            with closing(HTTPSConnection("127.0.0.1", port, timeout=30, context=trusted)) as https:
                https.request("POST", "/v1/reload", body=b"{}")
                response = https.getresponse()
                problem = json.loads(response.read())
            assert (response.status, problem["type"]) == (503, "TooManyConnections")
    wait_for(lambda: status_answers(daemon), what="the control connection freed")
    client = Client(http=f"https://127.0.0.1:{port}", ssl=trusted)
    with client, pytest.raises(DrivebayError, match="no credentials"):  # admitted, then 401
        client.request("version")
