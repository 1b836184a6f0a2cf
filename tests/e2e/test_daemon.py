"""drivebayd and drivebayctl end to end: real daemon, real drivers, real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import BIN, FAST_CONFIG, pid_alive, wait_for
from tests.sandbox.bundles import make_bundle, zip_bundle

FLAKY_DRIVER = """
import os, pathlib
FLAG = pathlib.Path(__file__).resolve().parents[3] / "crash-flag"


class CrashyDriver:
    def __init__(self, resource_id, properties):
        pass

    async def ping(self):
        return "pong"


if os.environ.get("CRASH_FLAG") and pathlib.Path(os.environ["CRASH_FLAG"]).exists():
    raise RuntimeError("crash flag is set")
"""


def build(tmp_path: Path, name: str, **extra) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return make_bundle(staging, name=name, **extra)


def test_drop_status_stop_start(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    row = daemon.wait_state("alpha", "RUNNING")
    assert row["version"] == "1.0.0" and row["pid"] and row["restarts"] == 0
    text = daemon.ctl("status")
    assert text.returncode == 0
    line = text.stdout.splitlines()[0]
    assert line.startswith("alpha@1.0.0".ljust(33) + "RUNNING    pid ")
    assert ", uptime 0:00:0" in line and line.endswith(", 0 resources")

    stopped = daemon.ctl("stop", "alpha")
    assert (stopped.returncode, stopped.stdout) == (0, "alpha@1.0.0: stopped\n")
    assert not pid_alive(row["pid"])
    assert daemon.ctl("status").returncode == 3
    again = daemon.ctl("stop", "alpha")
    assert (again.returncode, again.stdout) == (7, "alpha@1.0.0: ERROR (not running)\n")
    started = daemon.ctl("start", "alpha")
    assert (started.returncode, started.stdout) == (0, "alpha@1.0.0: started\n")
    assert daemon.status()["alpha"]["state"] == "RUNNING"
    restarted = daemon.ctl("restart", "all")
    assert restarted.stdout == "alpha@1.0.0: stopped\nalpha@1.0.0: started\n"


def test_kill_9_of_a_driver_restarts_it(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    first = daemon.wait_state("alpha", "RUNNING")["pid"]
    os.kill(first, signal.SIGKILL)
    row = wait_for(
        lambda: (r := daemon.status()["alpha"])["state"] == "RUNNING" and r["pid"] != first and r,
        what="restart",
    )
    assert row["restarts"] == 1
    assert "exited: alpha@1.0.0 (exited (signal 9 (SIGKILL)); not expected)" in daemon.log()


def test_crash_loop_ends_fatal_and_start_clears_it(daemon_factory, tmp_path):
    flag = tmp_path / "crash-flag"
    flag.write_text("on")
    config = {
        "restart": {"backoff_initial_s": 0.05, "max_restarts": 3, "window_s": 60},
        "drivers": {"crashy": {"env": {"CRASH_FLAG": str(flag)}}},
    }
    daemon = daemon_factory(config=config)
    daemon.start()
    daemon.drop(build(tmp_path, "crashy", src={"crashy.py": FLAKY_DRIVER}))
    row = daemon.wait_state("crashy", "FATAL")
    assert "RuntimeError: crash flag is set" in row["message"]
    assert "gave up after 3 restarts" in row["message"]
    assert "gave up: crashy@1.0.0 entered FATAL" in daemon.log()
    assert daemon.ctl("status", "crashy").returncode == 3
    flag.unlink()
    started = daemon.ctl("start", "crashy")
    assert (started.returncode, started.stdout) == (0, "crashy@1.0.0: started\n")


def test_start_order_categories_requires_and_cycle(daemon_factory, tmp_path):
    daemon = daemon_factory()
    for name, category, requires in [
        ("hv", "hypervisor", []),
        ("store-b", "storage", ["store-a"]),
        ("store-a", "storage", []),
        ("net", "network", []),
        ("loop-x", "other", ["loop-y"]),
        ("loop-y", "other", ["loop-x"]),
        ("needs-ghost", "other", ["ghost"]),
        ("plain", "other", []),
    ]:
        daemon.drop(
            build(tmp_path, name, manifest_extra={"category": category, "requires": requires})
        )
    daemon.start()
    for name in ("hv", "store-a", "store-b", "net", "plain"):
        daemon.wait_state(name, "RUNNING")
    status = daemon.status()
    assert status["loop-x"]["state"] == "BLOCKED"
    assert status["loop-x"]["message"] == "requires cycle: loop-x -> loop-y -> loop-x"
    assert status["needs-ghost"]["message"] == "requires ghost, which is not installed"
    assert daemon.ctl("resource", "add", "g1", "--driver", "needs-ghost").returncode == 0
    refused = daemon.ctl("call", "g1", "echo", "text=hi")
    assert refused.returncode == 1
    assert refused.stderr == (
        "error: NotRunning: needs-ghost@1.0.0 is BLOCKED (requires ghost, which is not "
        "installed); the operation was not sent; start what it requires, and it follows\n"
    )
    started = [
        line.split()[3] for line in daemon.log().splitlines() if line.endswith("entered STARTING")
    ]
    assert started.index("net@1.0.0") < started.index("store-a@1.0.0")
    assert started.index("store-a@1.0.0") < started.index("store-b@1.0.0")
    assert started.index("store-b@1.0.0") < started.index("hv@1.0.0") < started.index("plain@1.0.0")
    assert daemon.stop() == 0
    stopped = [line.split()[3] for line in daemon.log().splitlines() if "entered STOPPING" in line]
    assert stopped.index("plain@1.0.0") < stopped.index("hv@1.0.0") < stopped.index("store-b@1.0.0")
    assert (
        stopped.index("store-b@1.0.0") < stopped.index("store-a@1.0.0") < stopped.index("net@1.0.0")
    )


def test_removal_stops_the_driver(daemon, tmp_path):
    dropped = daemon.drop(build(tmp_path, "alpha"))
    pid = daemon.wait_state("alpha", "RUNNING")["pid"]
    import shutil

    shutil.rmtree(dropped)
    wait_for(lambda: "alpha" not in daemon.status(), what="alpha gone")
    assert not pid_alive(pid)


def test_half_written_zip_then_complete(daemon, tmp_path):
    archive = zip_bundle(build(tmp_path, "zippy"))
    data = archive.read_bytes()
    target = daemon.drivers / "zippy.zip"
    target.write_bytes(data[: len(data) // 2])
    row = daemon.wait_state("zippy.zip", "INVALID")
    assert "zip" in row["message"]
    assert daemon.ctl("status").returncode == 3
    target.write_bytes(data)
    daemon.wait_state("zippy", "RUNNING")
    assert "zippy.zip" not in daemon.status()


def test_invalid_bundle_is_reported_and_retried(daemon, tmp_path):
    bundle = build(tmp_path, "bad", manifest_extra={"entrypiont": "x:Y"})
    dropped = daemon.drop(bundle)
    row = daemon.wait_state("bad-1.0.0", "INVALID")
    assert (
        row["message"]
        == "bad-1.0.0: driver.yaml: unknown field 'entrypiont'; did you mean 'entrypoint'?"
    )
    manifest = (dropped / "driver.yaml").read_text().replace("entrypiont: x:Y\n", "")
    (dropped / "driver.yaml").write_text(manifest)
    daemon.wait_state("bad", "RUNNING")


def test_second_daemon_is_refused(daemon, daemon_factory):
    other = daemon_factory("other")
    other.config_path.write_text(daemon.config_path.read_text())
    other.start(wait=False)
    assert other.process is not None
    assert other.process.wait(timeout=60) == 1
    assert "is already running on" in other.log()
    assert other.log().count("\n") == 1  # one line, no traceback


def test_kill_9_of_the_daemon_takes_the_drivers_along(daemon, daemon_factory, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    daemon.drop(build(tmp_path, "beta"))
    pids = [daemon.wait_state(name, "RUNNING")["pid"] for name in ("alpha", "beta")]
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait()
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), deadline=5, what="drivers gone")
    # A new daemon replaces the stale socket and runs the drivers again.
    daemon.start()
    daemon.wait_state("alpha", "RUNNING")


def test_socket_is_private(daemon):
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o600
    if os.geteuid() == 0:
        refused = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                str(BIN / "python"),
                "-I",
                "-c",
                "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
                str(daemon.socket),
            ],
            capture_output=True,
            text=True,
        )
        assert refused.returncode != 0 and "PermissionError" in refused.stderr


def test_exit_codes_and_json(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha", manifest_extra={"idempotent": ["echo"]}))
    daemon.wait_state("alpha", "RUNNING")
    unknown = daemon.ctl("status", "nope")
    assert unknown.returncode == 4 and "no such driver: nope" in unknown.stderr
    assert daemon.ctl("stop", "nope").returncode == 4
    assert daemon.ctl("describe", "nope").returncode == 4
    assert daemon.ctl("bogus").returncode == 2
    assert daemon.ctl("start").returncode == 2
    pid = json.loads(daemon.ctl("pid", "alpha", "--json").stdout)
    assert pid == daemon.status()["alpha"]["pid"]
    assert int(daemon.ctl("pid").stdout) == daemon.process.pid
    described = json.loads(daemon.ctl("describe", "alpha", "--json").stdout)
    assert described["state"] == "RUNNING" and described["history"][-1]["to"] == "RUNNING"
    assert described["operations"] == ["echo"] and described["idempotent"] == ["echo"]
    # Built from the index: the builder added msgspec and uvloop to the driver's env.
    assert described["codec"].startswith("msgspec") and described["loop"] == "uvloop"
    shown = daemon.ctl("describe", "alpha")
    assert shown.returncode == 0 and "  idempotent:   echo\n" in shown.stdout
    avail = json.loads(daemon.ctl("avail", "--json").stdout)
    assert [(r["name"], r["verdict"]) for r in avail] == [("alpha", "active")]
    assert daemon.ctl("tail", "alpha", "stderr").returncode == 0
    assert daemon.ctl("version").stdout.startswith("drivebayd 0.1.0")
    assert daemon.ctl("reload").returncode == 0
    daemon.stop()
    gone = daemon.ctl("status")
    assert gone.returncode == 4
    assert gone.stderr == (
        f"drivebayd is not running at {daemon.socket}; start it with drivebayd\n"
    )
    assert daemon.ctl("stop", "alpha").returncode == 4


def test_requests_that_cannot_be_sent_or_answered_are_one_line(daemon, tmp_path):
    def ctl(*args: str, socket_path: Path = daemon.socket) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "drivebayctl"), "-s", str(socket_path), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    too_big = ctl("call", "v1", "echo", "n:=100000000000000000000000000")
    assert (too_big.returncode, too_big.stderr) == (
        2,
        "drivebayctl: cannot send that request: int too large to encode: "
        "100000000000000000000000000 > 2**64 - 1\n",
    )
    # A usage error is one, whether a daemon runs or not.
    no_daemon = ctl("call", "v1", "echo", "x:={bad", socket_path=tmp_path / "none.sock")
    assert no_daemon.returncode == 2 and no_daemon.stderr.count("\n") == 1
    negative = ctl("tail", "-n", "-5", "alpha")
    assert negative.returncode == 2
    assert "expected a number of lines (0 or more), got '-5'" in negative.stderr

    # -s naming another program's socket: it answers, but not in our protocol.
    other = tmp_path / "other.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(other))
    server.listen(1)

    def answer_garbage() -> None:
        peer, _ = server.accept()
        with peer:
            peer.recv(1 << 16)
            peer.sendall(b"\x00\x00\x00\x05hello")

    thread = threading.Thread(target=answer_garbage)
    thread.start()
    try:
        garbage = ctl("status", socket_path=other)
    finally:
        thread.join(30)
        server.close()
    assert garbage.returncode == 1
    assert garbage.stderr.startswith(f"drivebayctl: {other} does not answer as drivebayd: ")
    assert garbage.stderr.endswith("; check -s or the config's socket\n")
    assert garbage.stderr.count("\n") == 1


def test_a_bundle_that_cannot_be_stored_does_not_stop_the_others(daemon, tmp_path):
    bad = zip_bundle(build(tmp_path, "bad"))
    with zipfile.ZipFile(bad, "a") as zipped:  # a name no file system takes
        zipped.writestr("src/" + "a" * 300 + ".py", "")
    daemon.drop(bad)
    daemon.drop(build(tmp_path, "good"))
    daemon.wait_state("good", "RUNNING")
    rows = json.loads(daemon.ctl("status", "--json").stdout)
    invalid = [r for r in rows if r["state"] == "INVALID"]
    assert len(invalid) == 1 and "a name over 255 bytes; shorten it" in invalid[0]["message"]


def test_a_changed_bundle_of_the_running_version_never_stops_it(daemon, tmp_path):
    """Refused (INVALID) for as long as it is there, in place or beside the
    running file; the running version keeps serving through later passes."""

    def zipped(folder: str, description: str) -> Path:
        staging = tmp_path / folder
        staging.mkdir()
        bundle = make_bundle(staging, "demo", manifest_extra={"description": description})
        return zip_bundle(bundle)

    def invalid_files() -> list[str]:
        rows = json.loads(daemon.ctl("avail", "--json").stdout)
        return sorted(r["file"] for r in rows if r["verdict"] == "INVALID")

    def other_driver_running(name: str) -> None:  # a later reconcile pass has run
        daemon.drop(build(tmp_path, name))
        daemon.wait_state(name, "RUNNING")

    os.replace(zipped("one", "first"), daemon.drivers / "m-demo.zip")
    pid = daemon.wait_state("demo", "RUNNING")["pid"]
    os.replace(zipped("two", "changed in place"), daemon.drivers / "m-demo.zip")
    wait_for(lambda: invalid_files() == ["m-demo.zip"], what="the change refused")
    other_driver_running("other-a")
    os.replace(zipped("three", "a twin, sorting first"), daemon.drivers / "a-demo.zip")
    wait_for(lambda: invalid_files() == ["a-demo.zip", "m-demo.zip"], what="the twin refused")
    other_driver_running("other-b")
    row = daemon.status()["demo"]
    assert (row["state"], row["pid"]) == ("RUNNING", pid)
    os.remove(daemon.drivers / "a-demo.zip")
    os.replace(zipped("four", "first"), daemon.drivers / "m-demo.zip")  # the running content
    wait_for(lambda: invalid_files() == [], what="nothing refused any more")
    assert daemon.status()["demo"]["pid"] == pid


def test_a_drivers_dir_removed_and_made_again_is_watched(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    daemon.wait_state("alpha", "RUNNING")
    shutil.rmtree(daemon.drivers)
    daemon.drivers.mkdir()
    daemon.drop(build(tmp_path, "beta"))
    daemon.wait_state("beta", "RUNNING")
    wait_for(lambda: "alpha" not in daemon.status(), what="alpha gone with its bundle")
    # Without a fresh watch, beta is seen only if another pass happens to run.
    wait_for(lambda: "was removed or replaced; watching it anew" in daemon.log())


def test_bad_config_is_one_line(tmp_path):
    config = tmp_path / "drivebay.yaml"
    config.write_text("state_dri: /tmp/x\n")
    result = subprocess.run(
        [str(BIN / "drivebayd"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"drivebayd: {config}: unknown key 'state_dri'; did you mean 'state_dir'?\n"
    )


def test_a_bad_log_level_or_an_unusable_state_dir_is_one_line(tmp_path):
    def drivebayd(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "drivebayd"), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    config = tmp_path / "drivebay.yaml"
    config.write_text("log_level: debug\n")
    bad_level = drivebayd("--config", str(config))
    assert (bad_level.returncode, bad_level.stderr) == (
        2,
        f"drivebayd: {config}: log_level: 'debug' is not a level; use one of DEBUG, INFO, "
        "WARNING, ERROR, CRITICAL\n",
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unusable = drivebayd("--state", str(blocker / "state"), "--socket", str(tmp_path / "s"))
    assert unusable.returncode != 0
    assert unusable.stderr.count("\n") == 1
    assert f"cannot use state dir {blocker / 'state'}: " in unusable.stderr
    assert "make it writable for this user, or choose another --state" in unusable.stderr


def test_relative_state_and_drivers_flags_are_from_where_it_runs(tmp_path, envs_dir):
    config = tmp_path / "conf" / "drivebay.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({**FAST_CONFIG, "envs_dir": str(envs_dir)}))
    (tmp_path / "drv").mkdir()
    os.rename(build(tmp_path, "alpha"), tmp_path / "drv" / "alpha")
    daemon = subprocess.Popen(
        [str(BIN / "drivebayd"), "--config", str(config), "--state", "st", "--drivers", "drv"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socket_path = tmp_path / "st" / "drivebayd.sock"

    def alpha_state() -> str:
        result = subprocess.run(
            [str(BIN / "drivebayctl"), "-s", str(socket_path), "status", "--json", "alpha"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        rows = json.loads(result.stdout or "[]")
        return rows[0]["state"] if rows else ""

    try:
        wait_for(lambda: alpha_state() == "RUNNING", what="alpha running")
    finally:
        daemon.terminate()
        daemon.wait(60)


def test_shutdown_command_stops_everything(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    pid = daemon.wait_state("alpha", "RUNNING")["pid"]
    assert daemon.ctl("shutdown").returncode == 0
    assert daemon.process.wait(timeout=60) == 0
    assert not pid_alive(pid)
    assert not daemon.socket.exists()


@pytest.mark.parametrize("as_zip", [False, True])
def test_zip_and_dir_bundles_run(daemon, tmp_path, as_zip):
    bundle = build(tmp_path, "gamma")
    daemon.drop(zip_bundle(bundle) if as_zip else bundle)
    daemon.wait_state("gamma", "RUNNING")
    assert zipfile


SAYER = """
import sys


class SayerDriver:
    def __init__(self, resource_id, properties):
        pass

    async def say(self, text):
        print(text, flush=True)
        print("err:" + text, file=sys.stderr, flush=True)
        return True
"""


def test_tail_and_tail_follow(daemon, tmp_path):
    daemon.drop(build(tmp_path, "sayer", src={"sayer.py": SAYER}))
    daemon.wait_state("sayer", "RUNNING")
    assert daemon.ctl("resource", "add", "s1", "--driver", "sayer").returncode == 0
    assert daemon.ctl("call", "s1", "say", "text=first").returncode == 0
    wait_for(lambda: daemon.ctl("tail", "sayer").stdout == "first\n", what="stdout tail")
    assert daemon.ctl("tail", "sayer", "stderr").stdout == "err:first\n"
    follower = subprocess.Popen(
        [str(BIN / "drivebayctl"), "-s", str(daemon.socket), "tail", "-f", "sayer"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "first\n"
        assert daemon.ctl("call", "s1", "say", "text=second").returncode == 0
        assert follower.stdout.readline() == "second\n"
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=30)
        follower.stdout.close()
    assert follower.returncode == 0


def test_sighup_reloads_the_config(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    first = daemon.wait_state("alpha", "RUNNING")["pid"]
    text = daemon.config_path.read_text() + "drivers:\n  alpha:\n    env: {COLOUR: blue}\n"
    daemon.config_path.write_text(text)
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.status()["alpha"]["pid"] not in (None, first), what="restart by reload")
    assert "configuration reloaded from" in daemon.log()
    daemon.config_path.write_text("state_dri: broken\n")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed, keeping the old configuration" in daemon.log(), what="refusal")
    assert daemon.status()["alpha"]["state"] == "RUNNING"


def test_version_flags():
    for program in ("drivebayd", "drivebayctl"):
        result = subprocess.run([str(BIN / program), "--version"], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (0, f"{program} 0.1.0\n")


def test_unused_environments_are_collected(daemon_factory, tmp_path):
    from tests.wheels import build_wheel

    daemon = daemon_factory(config={"envs_dir": None})  # private: <state>/envs
    daemon.start()
    alpha = daemon.drop(build(tmp_path, "alpha"))
    daemon.wait_state("alpha", "RUNNING")
    envs = daemon.state / "envs"
    first = {p.name for p in envs.iterdir() if not p.name.startswith(".")}
    assert len(first) == 1
    beta = build(tmp_path, "beta", manifest_extra={"dependencies": ["tinydep==1.0"]})
    (beta / "lib").mkdir()
    build_wheel(beta / "lib", "tinydep", "1.0", {"tinydep.py": "VALUE = 1\n"})
    daemon.drop(beta)
    daemon.wait_state("beta", "RUNNING")
    shutil.rmtree(alpha)
    line = f"removed unused environment {next(iter(first))[:12]}"
    wait_for(lambda: line in daemon.log(), what="alpha's env collected")
    left = {p.name for p in envs.iterdir() if not p.name.startswith(".")}
    assert not first & left and len(left) == 1  # beta's env stays


def test_start_of_a_driver_with_requires_and_reload_spares_held(daemon, tmp_path):
    daemon.drop(build(tmp_path, "base"))
    daemon.drop(build(tmp_path, "dep", manifest_extra={"requires": ["base"]}))
    daemon.wait_state("dep", "RUNNING")
    assert daemon.ctl("stop", "dep", "base").stdout == "dep@1.0.0: stopped\nbase@1.0.0: stopped\n"
    refused = daemon.ctl("start", "dep")
    assert (refused.returncode, refused.stdout) == (
        1,
        "dep@1.0.0: ERROR (requires base, which is not running)\n",
    )
    assert daemon.ctl("start", "base").returncode == 0
    started = daemon.ctl("start", "dep")
    assert (started.returncode, started.stdout) == (0, "dep@1.0.0: started\n")
    # A reload with changed settings replaces running drivers, not held ones.
    assert daemon.ctl("stop", "dep").returncode == 0
    text = daemon.config_path.read_text() + "drivers:\n  dep:\n    env: {MODE: two}\n"
    daemon.config_path.write_text(text)
    assert daemon.ctl("reload").returncode == 0
    assert daemon.status()["dep"]["state"] == "STOPPED"
    assert daemon.ctl("start", "dep").returncode == 0


def test_bundle_limits_come_from_the_config(daemon_factory, tmp_path):
    daemon = daemon_factory(config={"bundles": {"max_members": 3}})
    daemon.start()
    daemon.drop(build(tmp_path, "big"))
    row = daemon.wait_state("big-1.0.0", "INVALID")
    assert row["message"] == "big-1.0.0: more than 3 entries; a bundle may hold at most 3"


def test_a_crash_promotes_the_spare(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    daemon.wait_state("alpha", "RUNNING")
    row = wait_for(lambda: (r := daemon.status()["alpha"])["spare_pid"] and r, what="spare")
    first, spare = row["pid"], row["spare_pid"]
    os.kill(first, signal.SIGKILL)
    again = wait_for(
        lambda: (r := daemon.status()["alpha"])["state"] == "RUNNING" and r["pid"] != first and r,
        what="restart",
    )
    assert again["pid"] == spare  # the spare became the driver
    fresh = wait_for(lambda: daemon.status()["alpha"]["spare_pid"], what="a new spare")
    assert fresh not in (first, spare)
    assert daemon.ctl("stop", "alpha").returncode == 0
    assert not pid_alive(spare) and not pid_alive(fresh)
    assert daemon.ctl("start", "alpha").returncode == 0
    spare = wait_for(lambda: daemon.status()["alpha"]["spare_pid"], what="spare after start")
    daemon.process.kill()
    daemon.process.wait()
    wait_for(lambda: not pid_alive(spare), deadline=5, what="spare died with the daemon")
