"""The event stream end to end: a real daemon, a real driver, drivebayctl
events and status --watch as an operator runs them; ``GET /v1/events`` as
SSE resumed after a dropped connection (exactly once, in order, or a gap),
its heartbeat, and the problem record that ends a stream on an error; FATAL,
a rolled-back upgrade and an update a TUF repository offers, as they reach
the ring."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import BIN, Daemon, wait_for
from tests.e2e.test_daemon import FLAKY_DRIVER, build
from tests.e2e.test_http_api import Api, UnixHttp
from tests.e2e.test_repositories import Server, drivebay
from tests.e2e.test_resources import mis_daemon
from tests.sandbox.bundles import make_bundle, zip_bundle


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


def spared(event: dict[str, Any]) -> bool:
    return event["type"] == "driver.spare" and event["version"] == "1.1.0"


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
        # 1.1.0 launches its spare once it serves: seen before the removal
        # below, nothing comes after that removal.
        if not any(spared(json.loads(line)) for line in events.seen):
            events.event(spared)

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


# -- GET /v1/events as Server-Sent Events ------------------------------------------------


class Stream:
    """One ``GET /v1/events`` stream on the daemon's http.sock, read record by
    record (the socket's timeout is the deadline of each read)."""

    def __init__(self, daemon: Daemon, target: str, headers: dict[str, str]) -> None:
        self.connection = UnixHttp(str(daemon.state / "http.sock"))
        self.connection.request("GET", target, headers=headers)
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        self.buffer = b""
        self.ended = False

    def raw(self, end: bytes) -> bytes | None:
        """The next record up to ``end``; None once the body has ended whole
        (a body cut short raises http.client.IncompleteRead)."""
        while end not in self.buffer:
            chunk = self.response.read1(1 << 16)
            if not chunk:
                assert not self.buffer, self.buffer
                self.ended = True
                return None
            self.buffer += chunk
        record, self.buffer = self.buffer.split(end, 1)
        return record

    def sse(self, heartbeats: bool = False) -> dict[str, Any] | None:
        """The next SSE record as {id, event, data (decoded)}; a heartbeat
        comment as {"comment": text} when ``heartbeats``, else skipped."""
        while True:
            record = self.raw(b"\n\n")
            if record is None:
                return None
            fields: dict[str, Any] = {}
            for line in record.decode().split("\n"):
                name, _, value = line.partition(":")
                if name == "":
                    fields["comment"] = value.strip()
                else:
                    fields[name] = value.removeprefix(" ")
            if "comment" in fields and not heartbeats:
                continue
            if "data" in fields:
                fields["data"] = json.loads(fields["data"])
            return fields

    def until(self, check: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The SSE records up to and with the first ``check`` accepts."""
        seen = []
        while True:
            record = self.sse()
            assert record is not None, f"the stream ended; saw {seen}"
            seen.append(record)
            if check(record):
                return seen

    def close(self) -> None:
        self.connection.close()


SSE = {"Accept": "text/event-stream"}


def added(resource: str) -> Callable[[dict[str, Any]], bool]:
    """The audit record that ends a ``resource-add`` of ``resource``."""

    def check(record: dict[str, Any]) -> bool:
        data = record["data"]
        return data["type"] == "audit" and data["data"]["what"].startswith(
            f"resource-add id='{resource}'"
        )

    return check


def add(api: Api, resource: str) -> None:
    body = {"id": resource, "driver": "mis", "properties": {"host": "a"}}
    status, answer = api("POST", "/v1/resources", body)
    assert status == 200, answer


def seq(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


def test_sse_resumes_after_a_drop_exactly_once_in_order_or_says_there_is_a_gap(
    daemon_factory, tmp_path
):
    daemon = mis_daemon(daemon_factory, tmp_path, {"events": {"ring_size": 40}})
    api = Api(str(daemon.state / "http.sock"))
    stream = Stream(daemon, "/v1/events", SSE)  # from now on
    try:
        add(api, "a1")
        last = stream.until(added("a1"))[-1]["id"]
    finally:
        stream.close()  # the connection drops
    for resource in ("a2", "a3", "a4"):  # while nobody reads
        add(api, resource)
    status, missed = api("GET", f"/v1/events?since={last}")
    assert status == 200 and len(missed) >= 6, missed

    # resumed by Last-Event-ID (which wins over ?last=1: nothing is cut)
    resumed = Stream(daemon, "/v1/events?last=1", {**SSE, "Last-Event-ID": last})
    try:
        got = [resumed.sse() for _ in missed]
        assert [r["id"] for r in got if r] == [e["id"] for e in missed]
        assert [seq(r["id"]) for r in got if r] == list(
            range(seq(last) + 1, seq(last) + 1 + len(missed))
        )
        assert [r["event"] for r in got if r] == [e["type"] for e in missed]
        assert [r["data"]["resource"] for r in got if r and r["event"] == "resource.added"] == [
            "a2",
            "a3",
            "a4",
        ]
        add(api, "a5")  # and on, live: the next record is the next event
        following = resumed.until(added("a5"))
        assert seq(following[0]["id"]) == seq(missed[-1]["id"]) + 1
        assert following[0]["data"]["resource"] == "a5"
        newest = following[-1]["id"]
    finally:
        resumed.close()

    for number in range(25):  # 50 events: more than the ring (40) holds after `newest`
        add(api, f"b{number:02}")
    held = api("GET", "/v1/events?since=0")[1]
    lost = Stream(daemon, "/v1/events", {**SSE, "Last-Event-ID": newest})
    try:
        gap = lost.sse()
        assert gap is not None and gap["event"] == "gap" and "id" not in gap, gap
        assert gap["data"]["data"]["missed"] == seq(held[0]["id"]) - seq(newest) - 1
        assert gap["data"]["data"]["after"] == newest
        assert "no longer holds" in gap["data"]["data"]["reason"]
        assert [lost.sse()["id"] for _ in held] == [e["id"] for e in held]  # type: ignore[index]
    finally:
        lost.close()

    other = Stream(daemon, "/v1/events", {**SSE, "Last-Event-ID": "0badb007-12"})
    try:
        gap = other.sse()
        assert gap is not None and gap["event"] == "gap"
        assert "another run of drivebayd" in gap["data"]["data"]["reason"]
        assert other.sse()["id"] == held[0]["id"]  # type: ignore[index]
    finally:
        other.close()


def test_sse_heartbeat_when_idle(daemon_factory, tmp_path):
    daemon = daemon_factory(config={"events": {"heartbeat_s": 0.05}})
    daemon.start()
    stream = Stream(daemon, "/v1/events", SSE)
    try:
        record = stream.sse(heartbeats=True)
        assert record == {"comment": "heartbeat"}, record
    finally:
        stream.close()


def test_a_stream_ends_on_an_error_with_a_problem_record(daemon_factory, tmp_path):
    daemon = mis_daemon(daemon_factory, tmp_path)
    api = Api(str(daemon.state / "http.sock"))
    sse = Stream(daemon, "/v1/events", SSE)
    ndjson = Stream(daemon, "/v1/events", {"Accept": "application/x-ndjson"})
    try:
        add(api, "c1")
        sse.until(added("c1"))
        while "c1" not in (ndjson.raw(b"\n") or b"").decode():
            pass
        assert daemon.stop() == 0  # the daemon stops: both streams end, and say why

        records = []
        while (record := sse.sse()) is not None:
            records.append(record)
        last = records[-1]
        assert last["event"] == "problem" and "id" not in last, records
        found = last["data"]["data"]
        assert (found["type"], found["status"]) == ("NotRunning", 409)
        assert found["detail"].startswith("drivebayd is stopping")
        assert sse.ended  # then the body ended whole

        lines = []
        while (line := ndjson.raw(b"\n")) is not None:
            lines.append(json.loads(line))
        assert lines[-1]["type"] == "problem" and lines[-1]["id"] is None
        assert lines[-1]["data"]["type"] == "NotRunning"
    finally:
        sse.close()
        ndjson.close()


# -- FATAL, a rolled-back upgrade and an update offered, on one daemon -----------------

BROKEN_ATTACH = '''"""shifty 1.1.0: healthy, but no resource attaches to it."""


class ShiftyDriver:
    @classmethod
    async def health(cls) -> dict:
        return {"ok": True}

    def __init__(self, resource_id: str, properties: dict) -> None:
        raise RuntimeError("shifty 1.1.0 attaches nothing")

    async def echo(self, text: str) -> dict:
        return {"resource": "?", "text": text}
'''

SICK = '''"""sicky 1.1.0: starts, but reports itself not ok."""


class SickyDriver:
    @classmethod
    async def health(cls) -> dict:
        return {"ok": False, "why": "sicky 1.1.0 is sick"}

    def __init__(self, resource_id: str, properties: dict) -> None:
        self.resource_id = resource_id
'''


@pytest.fixture(scope="module")
def lively(tmp_path_factory: pytest.TempPathFactory, envs_dir: Path) -> Iterator[Daemon]:
    """One daemon for the tests below (each works on a driver of its own): short
    backoff, two restarts before FATAL and no retry of it, the crashy and
    loopy drivers failing to load while ``crash-flag`` and ``loop-flag``
    exist, and an update check twice a second."""
    root = tmp_path_factory.mktemp("lively")
    config = {
        "restart": {"backoff_initial_s": 0.05, "max_restarts": 2, "fatal_retry_initial_s": None},
        "drivers": {
            "crashy": {"env": {"CRASH_FLAG": str(root / "crash-flag")}},
            "loopy": {"env": {"CRASH_FLAG": str(root / "loop-flag")}},
        },
        "update_check_interval_s": 0.5,
    }
    daemon = Daemon(root / "daemon", envs_dir, config)
    daemon.start()
    yield daemon
    daemon.stop()


@contextlib.contextmanager
def following(daemon: Daemon) -> Iterator[Output]:
    """``drivebayctl events -f --since 0 --json`` for the length of the block."""
    process = ctl(daemon, "events", "-f", "--since", "0", "--json")
    try:
        yield Output(process)
    finally:
        ended(process)


def http_events(daemon: Daemon) -> list[dict[str, Any]]:
    """``GET /v1/events?since=0`` on http.sock: all the ring holds."""
    status, found = Api(str(daemon.state / "http.sock"))("GET", "/v1/events?since=0")
    assert status == 200, found
    return list(found)


def running(daemon: Daemon, name: str, version: str) -> dict[str, Any]:
    """The status row of NAME@VERSION once it is RUNNING."""

    def row() -> dict[str, Any] | None:
        rows = json.loads(daemon.ctl("status", "--json").stdout)
        wanted = (name, version, "RUNNING")
        return next((r for r in rows if (r["name"], r["version"], r["state"]) == wanted), None)

    found: dict[str, Any] = wait_for(row, what=f"{name}@{version} RUNNING")
    return found


def version_of(daemon: Daemon, resource: str) -> str | None:
    """The version serving ``resource`` (None while it is detached)."""
    rows = json.loads(daemon.ctl("resources", "--json").stdout)
    found: str | None = next(r["version"] for r in rows if r["id"] == resource)
    return found


def of(driver: str, kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["driver"] == driver and event["type"] == kind


def test_a_crash_loop_ends_in_fatal_with_its_events(lively: Daemon, tmp_path: Path) -> None:
    flag = lively.root.parent / "crash-flag"
    flag.touch()
    with following(lively) as events:
        lively.drop(build(tmp_path, "crashy", src={"crashy.py": FLAKY_DRIVER}))
        restarts = [events.event(of("crashy", "driver.restart")) for _ in range(2)]
        assert [r["data"]["restarts"] for r in restarts] == [1, 2]
        fatal_move = events.event(lambda e: of("crashy", "driver.state")(e) and moved("FATAL")(e))
        fatal = events.event(of("crashy", "driver.fatal"))
    assert fatal_move["version"] == fatal["version"] == "1.0.0"
    assert "gave up after 2 restarts" in fatal["data"]["reason"]
    assert fatal["data"]["reason"] == fatal_move["data"]["reason"]
    assert fatal["data"]["retry_at"] is None  # restart.fatal_retry_initial_s: null
    assert lively.status()["crashy"]["state"] == "FATAL"
    # the same record over HTTP, as a platform reads the ring
    found = http_events(lively)
    assert [e["id"] for e in found if e["type"] == "driver.fatal"] == [fatal["id"]]


def test_an_upgrade_whose_attach_fails_is_rolled_back(lively: Daemon, tmp_path: Path) -> None:
    lively.drop(build(tmp_path, "shifty"))
    lively.wait_state("shifty", "RUNNING")
    assert lively.ctl("resource", "add", "s1", "--driver", "shifty").returncode == 0
    with following(lively) as events:
        lively.drop(build(tmp_path, "shifty", version="1.1.0", src={"shifty.py": BROKEN_ATTACH}))
        began = events.event(of("shifty", "upgrade.started"))
        undone = events.event(of("shifty", "upgrade.rolled_back"))
    assert (began["version"], began["data"]["from"], began["data"]["resources"]) == (
        "1.1.0",
        "1.0.0",
        1,
    )
    assert (undone["version"], undone["data"]["to"]) == ("1.1.0", "1.0.0")
    assert "s1 did not move: RuntimeError" in undone["data"]["reason"], undone
    assert "shifty 1.1.0 attaches nothing" in undone["data"]["reason"], undone
    assert not [line for line in events.seen if of("shifty", "upgrade.switched")(json.loads(line))]
    answer = lively.ctl("call", "s1", "echo", "text=still here", "--json")
    assert answer.returncode == 0, answer.stderr
    assert version_of(lively, "s1") == "1.0.0"


def test_an_upgrade_whose_health_check_fails_is_rolled_back(lively: Daemon, tmp_path: Path) -> None:
    lively.drop(build(tmp_path, "sicky"))
    lively.wait_state("sicky", "RUNNING")
    assert lively.ctl("resource", "add", "k1", "--driver", "sicky").returncode == 0
    with following(lively) as events:
        lively.drop(build(tmp_path, "sicky", version="1.1.0", src={"sicky.py": SICK}))
        failed = events.event(lambda e: of("sicky", "driver.state")(e) and moved("FAILED")(e))
        undone = events.event(of("sicky", "upgrade.rolled_back"))
    assert failed["version"] == undone["version"] == "1.1.0"
    assert undone["data"]["to"] == "1.0.0"
    assert "failed its first health check" in undone["data"]["reason"], undone
    assert "sicky 1.1.0 is sick" in undone["data"]["reason"], undone
    assert not [line for line in events.seen if of("sicky", "upgrade.started")(json.loads(line))]
    assert version_of(lively, "k1") == "1.0.0"
    status, text = Api(str(lively.state / "http.sock"))("GET", "/metrics")
    assert status == 200 and 'drivebay_rollbacks_total{driver="sicky"} 1.0' in text, text


def test_a_version_that_crash_loops_after_taking_over_is_rolled_back(
    lively: Daemon, tmp_path: Path
) -> None:
    lively.drop(build(tmp_path, "loopy"))
    lively.wait_state("loopy", "RUNNING")
    assert lively.ctl("resource", "add", "l1", "--driver", "loopy").returncode == 0
    flaky = FLAKY_DRIVER.replace("CrashyDriver", "LoopyDriver")
    with following(lively) as events:
        lively.drop(build(tmp_path, "loopy", version="1.1.0", src={"loopy.py": flaky}))
        switched = events.event(of("loopy", "upgrade.switched"))
        assert (switched["version"], switched["data"]["moved"]) == ("1.1.0", 1)
        events.event(of("loopy", "upgrade.finished"))
        (lively.root.parent / "loop-flag").touch()  # 1.1.0 no longer loads
        os.kill(running(lively, "loopy", "1.1.0")["pid"], signal.SIGKILL)
        fatal = events.event(of("loopy", "driver.fatal"))
        undone = events.event(of("loopy", "upgrade.rolled_back"))
    assert fatal["version"] == undone["version"] == "1.1.0"
    assert undone["data"]["to"] == "1.0.0"  # a version, as after a failed attach
    assert undone["data"]["reason"].startswith("rolled back: crash loop within 60s of taking over")
    wait_for(lambda: version_of(lively, "l1") == "1.0.0", what="l1 served by 1.0.0 again")


def test_a_newer_version_in_a_repository_is_an_update_event(lively: Daemon, tmp_path: Path) -> None:
    """A TUF repository (``drivebay repo``, served by ``http_site.py``) offers
    offered 1.1.0 while 1.0.0 runs: the update check puts it in the ring."""
    www, keys = tmp_path / "www", tmp_path / "keys"
    repo = www / "main"
    www.mkdir()
    drivebay("repo", "init", repo, "--keys", keys)
    drivebay("repo", "publish", repo)
    lively.drop(build(tmp_path, "offered"))
    lively.wait_state("offered", "RUNNING")
    server = Server(www)
    try:
        root_json = str(repo / "metadata" / "root.json")
        added = lively.ctl("repo", "add", "main", f"{server.url}/main", "--root", root_json)
        assert added.returncode == 0, added.stderr
        with following(lively) as events:
            newer = make_bundle(tmp_path / "newer", "offered", "1.1.0")
            drivebay("repo", "add", repo, zip_bundle(newer))
            drivebay("repo", "publish", repo)
            update = events.event(of("offered", "update.available"))
            assert (update["version"], update["data"]) == (
                "1.1.0",
                {"repo": "main", "installed": "1.0.0"},
            )
        assert lively.ctl("repo", "rm", "main").returncode == 0
    finally:
        server.stop()
    offered = [e for e in http_events(lively) if e["type"] == "update.available"]
    assert [e["id"] for e in offered] == [update["id"]]
