"""Resources end to end: drivebayctl resource/call against a real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import uvloop
import yaml

from kernel.control_client import ControlClient, OperationError
from tests.e2e.harness import pid_alive, wait_for
from tests.helpers import FIXTURES
from tests.sandbox.bundles import make_bundle

PROPERTIES = [
    {
        "key": "host",
        "type": "string",
        "required": True,
        "max_length": 20,
        "label": "host.label",
        "description": "host.help",
    },
    {"key": "size_gb", "type": "number"},
    {"key": "thin", "type": "boolean"},
    {"key": "expires", "type": "date"},
]


def misbehave_bundle(root: Path, version: str = "1.0.0", category: str = "storage") -> Path:
    source = (FIXTURES / "misbehave" / "src" / "misbehave.py").read_text()
    source += f"\nVERSION = {version!r}\n"
    source += "\nasync def _version(self):\n    return VERSION\nMisbehave.version = _version\n"
    bundle = make_bundle(
        root,
        name="mis",
        version=version,
        manifest_extra={
            "category": category,
            "entrypoint": "misbehave:Misbehave",
            "properties": PROPERTIES,
        },
        src={"misbehave.py": source},
    )
    resources = bundle / "resources"
    resources.mkdir()
    (resources / "messages.yaml").write_text(
        yaml.safe_dump({"host.label": "Host name", "host.help": "Where it lives"})
    )
    (resources / "messages.de.yaml").write_text(yaml.safe_dump({"host.label": "Rechnername"}))
    return bundle


@pytest.fixture
def mis(daemon, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(misbehave_bundle(staging))
    daemon.wait_state("mis", "RUNNING")
    daemon.staging = staging
    return daemon


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def test_add_validates_converts_and_calls(mis):
    bad = mis.ctl(
        "resource", "add", "v1", "--driver", "mis", "size_gb=ten", "thin=maybe", "hostname=x"
    )
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        "drivebayctl: invalid properties for v1 (mis):",
        "  size_gb: expected a number, got 'ten'; write a number, for example 10",
        "  thin: expected true or false, got 'maybe'; write true, false, yes or no",
        "  hostname: unknown property of mis; did you mean 'host'?",
        "  host: required; add host=VALUE",
    ]
    ok(
        mis.ctl(
            "resource",
            "add",
            "v1",
            "--driver",
            "mis",
            "host=alpha",
            "size_gb=10",
            "thin=true",
            "expires=2027-01-31",
        )
    )
    rows = json.loads(ok(mis.ctl("resources", "--json")).stdout)
    assert rows == [
        {
            "id": "v1",
            "driver": "mis",
            "version": "1.0.0",
            "pinned": None,
            "properties": {"host": "alpha", "size_gb": 10, "thin": True, "expires": "2027-01-31"},
            "state": "attached",
            "queued": 0,
            "last_event": None,
        }
    ]
    announced = mis.ctl("call", "v1", "announce", "name=low-space", 'data:={"free": 3}')
    assert json.loads(ok(announced).stdout) is True
    wait_for(lambda: json.loads(mis.ctl("resources", "--json").stdout)[0]["last_event"])
    event = json.loads(mis.ctl("resources", "--json").stdout)[0]["last_event"]
    assert (event["name"], event["data"], event["from"]) == ("low-space", {"free": 3}, "mis@1.0.0")
    assert "event from mis@1.0.0: v1 low-space {'free': 3}" in mis.log()
    described = json.loads(ok(mis.ctl("call", "v1", "describe")).stdout)
    assert described["properties"]["size_gb"] == 10 and described["resource"] == "v1"
    echoed = json.loads(ok(mis.ctl("call", "v1", "echo", 'value:={"n": [1, 2]}')).stdout)
    assert echoed == {"n": [1, 2]}
    assert json.loads(ok(mis.ctl("call", "v1", "echo", "value=plain")).stdout) == "plain"
    failed = mis.ctl("call", "v1", "fail", "message=disk on fire")
    assert (failed.returncode, failed.stderr) == (1, "error: ValueError: disk on fire\n")
    assert mis.ctl("call", "nope", "echo").returncode == 4
    assert mis.status()["mis"]["resources"] == 1


def test_set_rm_and_describe_labels(mis):
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=alpha"))
    pid = mis.status()["mis"]["pid"]
    ok(mis.ctl("resource", "set", "v1", "host=beta", "size_gb:=2.5"))
    described = json.loads(ok(mis.ctl("call", "v1", "describe")).stdout)
    assert described["properties"] == {"host": "beta", "size_gb": 2.5}
    assert described["pid"] == pid  # applied by re-attaching, not by a restart
    too_long = mis.ctl("resource", "set", "v1", "host=" + "x" * 30)
    assert too_long.returncode == 1 and "host: longer than 20 characters (30)" in too_long.stderr
    text = ok(mis.ctl("describe", "mis")).stdout
    assert "host            string   required Host name" in text
    ok(mis.ctl("resource", "rm", "v1"))
    assert json.loads(ok(mis.ctl("resources", "--json")).stdout) == []
    assert mis.ctl("call", "v1", "echo").returncode == 4


def test_busy_mailbox_refuses_at_once(daemon_factory, tmp_path):
    daemon = daemon_factory(config={"mailbox_size": 2})
    daemon.start()
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(misbehave_bundle(staging))
    daemon.wait_state("mis", "RUNNING")
    ok(daemon.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))

    async def main():
        client = await ControlClient.connect(str(daemon.socket))
        try:
            slow = [asyncio.ensure_future(client.call("v1", "sleep", {"seconds": 2}))]
            await queued(client, 1)  # in flight
            slow += [
                asyncio.ensure_future(client.call("v1", "sleep", {"seconds": 2})) for _ in range(2)
            ]
            await queued(client, 3)  # one in flight, the mailbox (2) full
            with pytest.raises(OperationError, match="Busy: resource v1 is busy: 2 operations"):
                await client.call("v1", "echo", {"value": 1})
            assert await asyncio.gather(*slow) == [2, 2, 2]
        finally:
            await client.close()

    uvloop.run(main())


async def queued(client: ControlClient, count: int) -> None:
    async with asyncio.timeout(30):
        while (await client.request("resources"))[0]["queued"] != count:
            await asyncio.sleep(0.01)


def test_crash_fails_in_flight_and_keeps_queued(mis):
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    ok(mis.ctl("resource", "add", "v2", "--driver", "mis", "host=b"))
    first_pid = mis.status()["mis"]["pid"]

    async def main():
        client = await ControlClient.connect(str(mis.socket))
        try:
            blocker = asyncio.ensure_future(client.call("v1", "sleep", {"seconds": 30}))
            waiting = asyncio.ensure_future(client.call("v1", "echo", {"value": "after"}))
            await queued(client, 2)  # one in flight, one in the mailbox
            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(OperationError, match=r"DriverCrashed: mis@1\.0\.0 exited"):
                await blocker
            assert await waiting == "after"  # went to the restarted process
            assert await client.call("v2", "echo", {"value": 2}) == 2
        finally:
            await client.close()

    uvloop.run(main())
    assert mis.status()["mis"]["pid"] != first_pid


def test_daemon_restart_restores_resources_and_pins(mis, tmp_path):
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a", "thin=false"))
    mis.stop()
    mis.start()
    mis.wait_state("mis", "RUNNING")
    rows = json.loads(ok(mis.ctl("resources", "--json")).stdout)
    assert rows[0]["properties"] == {"host": "a", "thin": False}
    wait_for(lambda: json.loads(mis.ctl("resources", "--json").stdout)[0]["state"] == "attached")
    assert json.loads(ok(mis.ctl("call", "v1", "echo", "value=back")).stdout) == "back"


def test_pins_and_versions_side_by_side(mis):
    ok(mis.ctl("resource", "add", "old", "--driver", "mis", "host=a"))
    ok(mis.ctl("resource", "add", "new", "--driver", "mis", "host=b"))
    ok(mis.ctl("resource", "pin", "old", "1.0.0"))
    mis.drop(misbehave_bundle(mis.staging, "1.1.0"))
    wait_for(
        lambda: json.loads(mis.ctl("call", "new", "version").stdout) == "1.1.0", what="upgrade"
    )
    assert json.loads(ok(mis.ctl("call", "old", "version")).stdout) == "1.0.0"
    status = {
        (r["name"], r["version"]): r["state"]
        for r in json.loads(mis.ctl("status", "--json").stdout)
    }
    assert status == {("mis", "1.0.0"): "RUNNING", ("mis", "1.1.0"): "RUNNING"}
    # An older version dropped later does not downgrade anyone.
    mis.drop(misbehave_bundle(mis.staging, "0.9.0"))
    wait_for(
        lambda: any(r["version"] == "0.9.0" for r in json.loads(mis.ctl("avail", "--json").stdout))
    )
    assert json.loads(ok(mis.ctl("call", "new", "version")).stdout) == "1.1.0"
    ok(mis.ctl("resource", "pin", "old", "--unpin"))
    assert json.loads(ok(mis.ctl("call", "old", "version")).stdout) == "1.1.0"
    wait_for(
        lambda: (
            "mis@1.0.0"
            not in [
                f"{r['name']}@{r['version']}"
                for r in json.loads(mis.ctl("status", "--json").stdout)
            ]
        ),
        what="1.0.0 retired",
    )


def test_absent_and_fatal_drivers_fail_at_once(mis):
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    dropped = next(mis.drivers.iterdir())
    pid = mis.status()["mis"]["pid"]
    shutil.rmtree(dropped)
    wait_for(lambda: "mis" not in mis.status(), what="driver gone")
    assert not pid_alive(pid)
    absent = mis.ctl("call", "v1", "echo")
    assert absent.returncode == 1
    assert "driver mis is not installed" in absent.stderr and "resource v1 is kept" in absent.stderr
    assert json.loads(ok(mis.ctl("resources", "--json")).stdout)[0]["id"] == "v1"


def test_config_change_hands_over_without_losing_resources(daemon_factory, tmp_path):
    daemon = daemon_factory(config={"drivers": {"mis": {"env": {"MODE": "one"}}}})
    daemon.start()
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(misbehave_bundle(staging))
    first = daemon.wait_state("mis", "RUNNING")["pid"]
    ok(daemon.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    settings = yaml.safe_load(daemon.config_path.read_text())
    settings["drivers"]["mis"]["env"]["MODE"] = "two"
    daemon.config_path.write_text(yaml.safe_dump(settings))
    reloaded = ok(daemon.ctl("reload"))
    assert "mis" in reloaded.stdout
    wait_for(
        lambda: (r := daemon.status().get("mis")) and r["state"] == "RUNNING" and r["pid"] != first,
        what="new process",
    )
    described = json.loads(ok(daemon.ctl("call", "v1", "describe")).stdout)
    assert described["pid"] != first
    assert not pid_alive(first) or wait_for(lambda: not pid_alive(first), what="old process gone")


def test_rm_answers_the_call_in_flight_and_the_queued_change(mis):
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))

    async def main():
        client = await ControlClient.connect(str(mis.socket))
        admin = await ControlClient.connect(str(mis.socket))
        try:
            in_flight = asyncio.ensure_future(client.call("v1", "sleep", {"seconds": 30}))
            await queued(client, 1)
            change = asyncio.ensure_future(
                admin.request("resource-set", {"id": "v1", "assignments": ["host=b"]})
            )
            await queued(client, 2)
            await admin.request("resource-rm", {"id": "v1"})
            for answer in (in_flight, change):
                with pytest.raises(OperationError, match="resource v1 was removed"):
                    await answer
        finally:
            await client.close()
            await admin.close()

    uvloop.run(main())


def test_pin_to_an_installed_version_that_is_not_running(mis):
    mis.drop(misbehave_bundle(mis.staging, "1.1.0"))
    wait_for(lambda: only_running(mis, "1.1.0"), what="1.0.0 retired")
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    assert json.loads(ok(mis.ctl("call", "v1", "version")).stdout) == "1.1.0"
    ok(mis.ctl("resource", "pin", "v1", "1.0.0"))
    assert json.loads(ok(mis.ctl("call", "v1", "version")).stdout) == "1.0.0"


def only_running(daemon, version):
    rows = json.loads(daemon.ctl("status", "--json").stdout)
    return [(r["version"], r["state"]) for r in rows] == [(version, "RUNNING")]


def test_resources_reattach_after_a_restart_without_a_call(mis):
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    first = mis.status()["mis"]["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: (r := mis.status()["mis"])["state"] == "RUNNING" and r["pid"] != first)
    wait_for(
        lambda: json.loads(mis.ctl("resources", "--json").stdout)[0]["state"] == "attached",
        what="re-attached",
    )


def test_a_bad_call_request_fails_alone(mis):
    """Requests a program can send but drivebayctl never would: each fails with
    one line, and the resource's actor keeps serving the next operations."""
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))

    async def main():
        client = await ControlClient.connect(str(mis.socket))
        try:
            for payload, error in [
                ({"timeout": "soon"}, "timeout must be a number of seconds"),
                ({"timeout": -1}, "timeout must be a number of seconds"),
                ({"args": [1, 2]}, "args must be a map"),
                ({"op": 7}, "op must be a string"),
            ]:
                request = {"resource": "v1", "op": "echo", "args": {"value": 1}, **payload}
                with pytest.raises(OperationError, match=error) as caught:
                    await client.request("call", request)
                assert caught.value.code == 2
            assert await client.call("v1", "echo", {"value": "still"}) == "still"
        finally:
            await client.close()

    uvloop.run(main())
