"""Resources end to end: drivebayctl resource/call against a real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml

from drivebay.client import AsyncClient, OperationError
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
    {"key": "attach_delay", "type": "number"},  # seconds the driver's attach takes
    {"key": "stubborn", "type": "boolean"},  # its attach ignores a cancellation
]


def misbehave_bundle(
    root: Path,
    version: str = "1.0.0",
    category: str = "storage",
    limits: dict[str, Any] | None = None,
    healthy: bool = True,
) -> Path:
    source = (FIXTURES / "misbehave" / "src" / "misbehave.py").read_text()
    source += f"\nVERSION = {version!r}\n"
    source += "\nasync def _version(self):\n    return VERSION\nMisbehave.version = _version\n"
    source += f"\nMisbehave.healthy = {healthy!r}\n"
    # A file crash-VERSION in the working dir makes this version die in its
    # health check: every start of it then fails (a crash loop on demand);
    # while a file hold-health-VERSION is there, its health check waits.
    source += (
        "\n_health = Misbehave.health.__func__\n"
        "async def _checked_health(cls):\n"
        "    if os.path.exists(f'crash-{VERSION}'):\n"
        "        os._exit(3)\n"
        "    while os.path.exists(f'hold-health-{VERSION}'):\n"
        "        await asyncio.sleep(0.05)\n"
        "    return await _health(cls)\n"
        "Misbehave.health = classmethod(_checked_health)\n"
    )
    bundle = make_bundle(
        root,
        name="mis",
        version=version,
        manifest_extra={
            "category": category,
            "entrypoint": "misbehave:Misbehave",
            "properties": PROPERTIES,
            **({"limits": limits} if limits else {}),
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


def mis_daemon(daemon_factory, tmp_path, config=None):
    """A daemon with ``config``, the misbehave driver RUNNING and resource v1."""
    daemon = daemon_factory(config=config)
    daemon.start()
    daemon.staging = tmp_path / "staging"
    daemon.staging.mkdir()
    daemon.drop(misbehave_bundle(daemon.staging))
    daemon.wait_state("mis", "RUNNING")
    ok(daemon.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    return daemon


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
    twice = mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a", "host=b")
    assert twice.returncode == 1
    assert "  host: given more than once; give each key once" in twice.stderr.splitlines()
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
    daemon = mis_daemon(daemon_factory, tmp_path, {"mailbox_size": 2})

    async def main():
        client = await AsyncClient.connect(str(daemon.socket))
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


async def queued(client: AsyncClient, count: int) -> None:
    async with asyncio.timeout(30):
        while (await client.request("resources"))[0]["queued"] != count:
            await asyncio.sleep(0.01)


def test_crash_fails_in_flight_and_keeps_queued(mis):
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    ok(mis.ctl("resource", "add", "v2", "--driver", "mis", "host=b"))
    first_pid = mis.status()["mis"]["pid"]

    async def main():
        client = await AsyncClient.connect(str(mis.socket))
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
        client = await AsyncClient.connect(str(mis.socket))
        admin = await AsyncClient.connect(str(mis.socket))
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
        client = await AsyncClient.connect(str(mis.socket))
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


async def journal_has(client: AsyncClient, event: list[str], reader: str = "v2") -> None:
    """Wait until the driver's journal (shared by its instances) shows ``event``."""
    async with asyncio.timeout(30):
        while event not in await client.call(reader, "read_journal"):
            await asyncio.sleep(0.01)


def test_the_next_operation_waits_for_one_that_timed_out(mis):
    """A sync operation past its deadline keeps running in its thread: its
    caller gets CallTimeout at once, and the resource's next operation starts
    only when it has really ended (never two at once on one resource)."""
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    ok(mis.ctl("resource", "add", "v2", "--driver", "mis", "host=b"))

    async def main():
        client = await AsyncClient.connect(str(mis.socket))
        try:
            with pytest.raises(OperationError, match=r"CallTimeout: .*hold on v1 took longer"):
                await client.call("v1", "hold", {"gate": "g"}, timeout=0.3)
            after = asyncio.ensure_future(client.call("v1", "note", {"tag": "after"}))
            await queued(client, 1)  # waiting behind the operation that still runs
            await client.call("v2", "release", {"gate": "g"})
            assert await after == "after"
            journal = await client.call("v2", "read_journal")
            assert [e for e in journal if e[0] in ("start", "release", "end", "note")] == [
                ["start", "v1", "g"],
                ["release", "g"],
                ["end", "v1", "g"],
                ["note", "v1", "after"],
            ]
        finally:
            await client.close()

    uvloop.run(main())


def test_an_operation_that_never_ends_gets_its_driver_restarted_as_hung(daemon, tmp_path):
    """Past the driver's call timeout after its cancellation, an operation that
    still runs makes its driver hung: killed, restarted, and the resource's
    next operation runs on the new process."""
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(misbehave_bundle(staging, limits={"call_timeout_s": 2}))
    daemon.wait_state("mis", "RUNNING")
    ok(daemon.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    first = daemon.status()["mis"]["pid"]

    async def main():
        client = await AsyncClient.connect(str(daemon.socket))
        try:
            with pytest.raises(OperationError, match="CallTimeout"):
                await client.call("v1", "hold", {"gate": "never"}, timeout=0.3)
            async with asyncio.timeout(60):
                assert await client.call("v1", "note", {"tag": "after"}) == "after"
        finally:
            await client.close()

    uvloop.run(main())
    assert daemon.status()["mis"]["pid"] != first
    assert "hung: an operation on v1 did not end within 2s of its cancellation" in daemon.log()


def test_a_client_gone_mid_add_leaves_the_resource_added_and_stored(mis):
    """A change runs to its end when its client goes away: memory, the driver
    and the state store agree, also after a restart of the daemon."""
    ok(mis.ctl("resource", "add", "v2", "--driver", "mis", "host=b"))

    async def main():
        client = await AsyncClient.connect(str(mis.socket))
        watcher = await AsyncClient.connect(str(mis.socket))
        try:
            request = {"id": "v1", "driver": "mis", "assignments": ["host=a", "attach_delay=1"]}
            adding = asyncio.ensure_future(client.request("resource-add", request))
            await journal_has(watcher, ["attach-start", "v1"])
            await client.close()  # the client goes away while the driver attaches
            with pytest.raises(ConnectionError):
                await adding
            await journal_has(watcher, ["attach-end", "v1"])
        finally:
            await watcher.close()

    uvloop.run(main())
    wait_for(
        lambda: (
            [r["state"] for r in json.loads(mis.ctl("resources", "--json").stdout)]
            == ["attached", "attached"]
        ),
        what="v1 attached",
    )
    mis.stop()
    mis.start()
    mis.wait_state("mis", "RUNNING")
    rows = json.loads(ok(mis.ctl("resources", "--json")).stdout)
    assert [r["id"] for r in rows] == ["v1", "v2"]


def test_rm_during_an_attach_leaves_no_instance_behind(mis):
    """Even when the driver completes an attach the kernel gave up on."""
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    ok(mis.ctl("resource", "add", "v2", "--driver", "mis", "host=b"))

    async def main():
        client = await AsyncClient.connect(str(mis.socket))
        admin = await AsyncClient.connect(str(mis.socket))
        try:
            # A property change re-attaches v1, and this attach takes long.
            request = {"id": "v1", "assignments": ["attach_delay=60", "stubborn=true"]}
            changing = asyncio.ensure_future(client.request("resource-set", request))
            await journal_has(admin, ["detach", "v1"])  # the old instance left
            await admin.request("resource-rm", {"id": "v1"})
            with pytest.raises(OperationError, match="resource v1 was removed"):
                await changing
            await journal_has(admin, ["attach-end", "v1"])  # it ignored the cancel
            async with asyncio.timeout(30):
                while (await admin.call("v2", "read_journal"))[-1] != ["detach", "v1"]:
                    await asyncio.sleep(0.01)  # the runtime detaches what it finished
            assert await admin.call("v2", "attached_here") == ["v2"]
        finally:
            await client.close()
            await admin.close()

    uvloop.run(main())
    assert [r["id"] for r in json.loads(ok(mis.ctl("resources", "--json")).stdout)] == ["v2"]


def test_a_version_that_failed_stays_failed_after_a_restart(mis):
    """A new version that failed its health check is not brought back by a
    restart of the daemon: the version before it keeps serving."""
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    mis.drop(misbehave_bundle(mis.staging, "1.1.0", healthy=False))
    wait_for(lambda: version_states(mis) == [("1.0.0", "RUNNING"), ("1.1.0", "FAILED")])
    mis.stop()
    restarted_at = len(mis.log())
    mis.start()
    wait_for(lambda: version_states(mis) == [("1.0.0", "RUNNING"), ("1.1.0", "FAILED")])
    rows = json.loads(mis.ctl("status", "--json").stdout)  # exit 3: one is not running
    assert rows[1]["message"].count("kept from before drivebayd restarted") == 1
    assert json.loads(ok(mis.ctl("call", "v1", "version")).stdout) == "1.0.0"
    assert "spawned: mis@1.1.0" not in mis.log()[restarted_at:]
    mis.stop()  # and once more: the reason is not wrapped a second time
    mis.start()
    wait_for(lambda: version_states(mis) == [("1.0.0", "RUNNING"), ("1.1.0", "FAILED")])
    rows = json.loads(mis.ctl("status", "--json").stdout)
    assert rows[1]["message"].count("kept from before drivebayd restarted") == 1


def version_states(daemon):
    rows = json.loads(daemon.ctl("status", "--json").stdout)
    return sorted((r["version"], r["state"]) for r in rows)


def test_a_new_version_that_crash_loops_after_taking_over_is_rolled_back(daemon_factory, tmp_path):
    """Healthy at first, then a crash loop soon after it took over: the new
    version ends FAILED and the one before it serves again."""
    restart = {"backoff_initial_s": 0.05, "max_restarts": 2, "spare": False}
    daemon = mis_daemon(daemon_factory, tmp_path, {"restart": restart})
    daemon.drop(misbehave_bundle(daemon.staging, "1.1.0"))
    wait_for(lambda: only_running(daemon, "1.1.0"), what="1.1.0 took over")
    assert json.loads(ok(daemon.ctl("call", "v1", "version")).stdout) == "1.1.0"
    (daemon.state / "work" / "mis" / "crash-1.1.0").touch()
    daemon.ctl("call", "v1", "exit_now")  # from now on every start of 1.1.0 dies
    wait_for(
        lambda: version_states(daemon) == [("1.0.0", "RUNNING"), ("1.1.0", "FAILED")],
        deadline=60,
        what="1.0.0 back, 1.1.0 FAILED",
    )
    wait_for(
        lambda: daemon.ctl("call", "v1", "version").stdout.strip() == '"1.0.0"',
        what="v1 served by 1.0.0",
    )
    rows = json.loads(daemon.ctl("status", "--json").stdout)
    assert "rolled back: crash loop within 60s of taking over" in rows[1]["message"]


def test_a_reload_while_a_version_starts_reaches_that_version(daemon_factory, tmp_path):
    """The new settings reach a version that was starting (spawned under the
    old ones) during the reload: once it runs, it is handed over to a process
    with the new settings."""
    daemon = mis_daemon(daemon_factory, tmp_path, {"drivers": {"mis": {"env": {"XK": "old"}}}})
    hold = daemon.state / "work" / "mis" / "hold-health-1.1.0"
    hold.touch()
    daemon.drop(misbehave_bundle(daemon.staging, "1.1.0"))
    wait_for(lambda: ("1.1.0", "STARTING") in version_states(daemon), what="1.1.0 starting")
    config = yaml.safe_load(daemon.config_path.read_text())
    config["drivers"]["mis"]["env"]["XK"] = "new"
    daemon.config_path.write_text(yaml.safe_dump(config))
    ok(daemon.ctl("reload"))
    hold.unlink()  # 1.1.0 passes its health check, spawned with XK=old
    wait_for(
        lambda: daemon.ctl("call", "v1", "env", "key=XK").stdout.strip() == '"new"',
        deadline=60,
        what="v1 served by a process with the new settings",
    )
    assert json.loads(ok(daemon.ctl("call", "v1", "version")).stdout) == "1.1.0"


def test_a_call_made_while_the_daemon_starts_waits_for_its_driver(daemon_factory, tmp_path):
    """A call that reaches a restarted daemon before it has read its drivers
    dir waits for the driver, instead of being told it is not installed."""
    daemon = mis_daemon(daemon_factory, tmp_path)
    assert daemon.stop() == 0
    slow = daemon.drivers / "many-files"  # makes the first read of the drivers dir take a while
    for folder in range(20):
        (slow / str(folder)).mkdir(parents=True)
        for name in range(500):
            (slow / str(folder) / str(name)).touch()
    daemon.start(wait=False)

    async def first_call() -> Any:
        async with asyncio.timeout(60):
            while True:
                try:
                    client = await AsyncClient.connect(str(daemon.socket))
                    break
                except OSError:  # not listening yet
                    await asyncio.sleep(0.001)
        try:
            return await client.call("v1", "echo", {"value": "first"})
        finally:
            await client.close()

    assert uvloop.run(first_call()) == "first"
    assert "is not installed" not in daemon.log()
