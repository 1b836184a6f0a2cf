"""Supervision end to end: reloads reaching running drivers, FATAL retried,
frozen and missing spares replaced, stop in waves. Real daemon, real drivers."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.harness import BIN, Daemon, pid_alive, wait_for
from tests.e2e.test_daemon import FLAKY_DRIVER, build


def crashy(daemon_factory: Any, tmp_path: Path, restart: dict[str, Any]) -> tuple[Daemon, Path]:
    """A daemon with the crashy driver, which fails to load while ``flag`` exists."""
    flag = tmp_path / "crash-flag"
    config = {
        "restart": {"backoff_initial_s": 0.05, "window_s": 60, **restart},
        "drivers": {"crashy": {"env": {"CRASH_FLAG": str(flag)}}},
    }
    daemon = daemon_factory(config=config)
    daemon.start()
    return daemon, flag


def test_a_reload_reaches_the_restart_policy_of_a_running_driver(daemon_factory, tmp_path):
    daemon, flag = crashy(daemon_factory, tmp_path, {"max_restarts": 2})
    daemon.drop(build(tmp_path, "crashy", src={"crashy.py": FLAKY_DRIVER}))
    pid = daemon.wait_state("crashy", "RUNNING")["pid"]
    config = yaml.safe_load(daemon.config_path.read_text())
    config["restart"]["max_restarts"] = 4
    daemon.config_path.write_text(yaml.safe_dump(config))
    reloaded = daemon.ctl("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert json.loads(reloaded.stdout)["changed_drivers"] == []  # no new process for this
    assert daemon.status()["crashy"]["pid"] == pid
    flag.write_text("on")
    os.kill(pid, signal.SIGKILL)
    row = daemon.wait_state("crashy", "FATAL")
    assert "gave up after 4 restarts" in row["message"]
    assert row["restarts"] == 4


def test_a_fatal_driver_is_retried_and_comes_back_once_the_cause_goes(daemon_factory, tmp_path):
    restart = {"max_restarts": 2, "fatal_retry_initial_s": 0.2, "fatal_retry_max_s": 2}
    daemon, flag = crashy(daemon_factory, tmp_path, restart)
    flag.write_text("on")
    daemon.drop(build(tmp_path, "crashy", src={"crashy.py": FLAKY_DRIVER}))
    # One answer says both: still FATAL (exit 3), and when it is tried again.
    wait_for(
        lambda: (
            (r := daemon.ctl("status", "crashy")).returncode == 3 and "FATAL, retry at " in r.stdout
        ),
        what="FATAL with its retry time",
    )
    row = wait_for(
        lambda: (r := daemon.status()["crashy"])["state"] == "FATAL" and r["next_retry_at"] and r,
        what="FATAL in --json",
    )
    assert abs(row["next_retry_at"] - time.time()) < 60  # epoch seconds, soon
    flag.unlink()
    daemon.wait_state("crashy", "RUNNING")
    assert "retrying crashy@1.0.0 after FATAL" in daemon.log()
    history = json.loads(daemon.ctl("describe", "crashy", "--json").stdout)["history"]
    assert any(m["from"] == "FATAL" and m["to"] == "STARTING" for m in history)
    assert daemon.status()["crashy"]["next_retry_at"] is None


def spare_of(daemon: Daemon, name: str) -> tuple[int, int]:
    row = wait_for(lambda: (r := daemon.status()[name])["spare_pid"] and r, what="a spare")
    return row["pid"], row["spare_pid"]


def test_a_frozen_spare_does_not_hold_up_a_crash(daemon_factory, tmp_path):
    # Idle pings far apart: the crash, not the idle check, meets the frozen spare.
    daemon = daemon_factory(config={"timeouts": {"start_s": 30, "ping_interval_s": 60}})
    daemon.start()
    daemon.drop(build(tmp_path, "alpha"))
    daemon.wait_state("alpha", "RUNNING")
    first, spare = spare_of(daemon, "alpha")
    os.kill(spare, signal.SIGSTOP)
    began = time.monotonic()
    os.kill(first, signal.SIGKILL)
    row = wait_for(
        lambda: (
            (r := daemon.status()["alpha"])["state"] == "RUNNING"
            and r["pid"] not in (first, spare)
            and r
        ),
        what="a fresh driver",
    )
    took = time.monotonic() - began
    assert f"alpha@1.0.0: spare pid {spare} did not answer a ping within 0.5s; discarded" in (
        daemon.log()
    )
    assert took < 15, took  # the start deadline (30 s) was not waited for
    assert row["restarts"] == 1
    wait_for(lambda: not pid_alive(spare), what="the frozen spare reaped")


def test_a_frozen_or_dead_spare_is_replaced_while_idle(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    daemon.wait_state("alpha", "RUNNING")
    _, frozen = spare_of(daemon, "alpha")
    os.kill(frozen, signal.SIGSTOP)
    fresh = wait_for(
        lambda: (p := daemon.status()["alpha"]["spare_pid"]) not in (None, frozen) and p,
        what="a new spare for the frozen one",
    )
    assert not pid_alive(frozen)
    assert f"spare pid {frozen} did not answer a ping within 0.5s; discarded" in daemon.log()
    os.kill(fresh, signal.SIGKILL)
    wait_for(
        lambda: daemon.status()["alpha"]["spare_pid"] not in (None, fresh),
        what="a new spare for the dead one",
    )
    assert f"spare pid {fresh} exited; discarded" in daemon.log()


def test_a_spare_that_cannot_be_made_for_lack_of_descriptors_is_made_later(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    daemon.wait_state("alpha", "RUNNING")
    _, spare = spare_of(daemon, "alpha")
    assert daemon.process is not None
    pid = daemon.process.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (0, limits[1]))  # no new descriptor
    try:
        os.kill(spare, signal.SIGKILL)
        # (EMFILE: "Too many open files", or the daemon's own check of its limit)
        wait_for(lambda: "no spare process" in daemon.log(), what="a spare not made")
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    wait_for(
        lambda: daemon.status()["alpha"]["spare_pid"] not in (None, spare),
        deadline=60,
        what="the spare made once descriptors are back",
    )


HANGER = """
import os, pathlib, time


class {cls}:
    def __init__(self, resource_id, properties):
        pass

    def hang(self):
        pathlib.Path(os.environ["MARKS"], "{name}").touch()
        while not pathlib.Path(os.environ["RELEASE"]).exists():
            time.sleep(0.02)
        return "released"
"""


def test_stop_all_stops_wave_by_wave_each_wave_at_once(daemon_factory, tmp_path):
    marks, release = tmp_path / "marks", tmp_path / "release"
    marks.mkdir()
    env = {"MARKS": str(marks), "RELEASE": str(release)}
    config = {
        "timeouts": {"drain_s": 120, "ping_interval_s": 1, "ping_timeout_s": 5},
        "drivers": {"slow-a": {"env": dict(env)}, "slow-b": {"env": dict(env)}},
    }
    daemon = daemon_factory(config=config)
    daemon.start()
    daemon.drop(build(tmp_path, "base"))
    for name, cls in (("slow-a", "SlowADriver"), ("slow-b", "SlowBDriver")):
        source = HANGER.format(cls=cls, name=name)
        module = name.replace("-", "_") + ".py"
        daemon.drop(
            build(tmp_path, name, src={module: source}, manifest_extra={"requires": ["base"]})
        )
    for name in ("base", "slow-a", "slow-b"):
        daemon.wait_state(name, "RUNNING")
    ctl = [str(BIN / "drivebayctl"), "-s", str(daemon.socket)]
    calls = []
    for name in ("slow-a", "slow-b"):
        assert daemon.ctl("resource", "add", f"r-{name}", "--driver", name).returncode == 0
        call = [*ctl, "call", f"r-{name}", "hang", "--timeout", "120"]
        calls.append(subprocess.Popen(call, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    stopper = None
    try:
        wait_for(lambda: len(list(marks.iterdir())) == 2, what="both operations running")
        stopper = subprocess.Popen([*ctl, "stop", "all"], stdout=subprocess.PIPE, text=True)

        def both_draining_base_running() -> bool:
            states = {name: row["state"] for name, row in daemon.status().items()}
            return states == {"base": "RUNNING", "slow-a": "STOPPING", "slow-b": "STOPPING"}

        # Both dependents drain at once (each held by its operation), and what
        # they require waits for them.
        wait_for(both_draining_base_running, what="one wave stopping at once")
    finally:
        release.touch()
        outputs = [call.communicate(timeout=60) for call in calls]
        stopped = stopper.communicate(timeout=60)[0] if stopper else ""
    assert [call.returncode for call in calls] == [0, 0], outputs
    assert stopped.splitlines() == [
        "slow-a@1.0.0: stopped",
        "slow-b@1.0.0: stopped",
        "base@1.0.0: stopped",
    ]
    order = [line.split()[3] for line in daemon.log().splitlines() if "entered STOPPED" in line]
    assert order.index("base@1.0.0") > max(order.index("slow-a@1.0.0"), order.index("slow-b@1.0.0"))


def reload_with(daemon: Daemon, **sections: dict[str, Any]) -> None:
    config = yaml.safe_load(daemon.config_path.read_text())
    for key, values in sections.items():
        config[key] = {**config.get(key, {}), **values}
    daemon.config_path.write_text(yaml.safe_dump(config))
    reloaded = daemon.ctl("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert json.loads(reloaded.stdout)["changed_drivers"] == []  # no new process for these


CHECKED = """
import os


class CheckedDriver:
    @classmethod
    async def health(cls):
        with open(os.environ["CHECKS"], "a") as checks:
            checks.write("x")
        return {"ok": True}

    def __init__(self, resource_id, properties):
        pass
"""


def test_a_reloaded_health_interval_reaches_a_running_driver(daemon_factory, tmp_path):
    checks = tmp_path / "checks"
    config = {
        "timeouts": {"health_interval_s": 3600},
        "drivers": {"checked": {"env": {"CHECKS": str(checks)}}},
    }
    daemon = daemon_factory(config=config)
    daemon.start()
    daemon.drop(build(tmp_path, "checked", src={"checked.py": CHECKED}))
    pid = daemon.wait_state("checked", "RUNNING")["pid"]
    assert checks.read_text() == "x"  # the first check, at start
    reload_with(daemon, timeouts={"health_interval_s": 0.1})
    wait_for(lambda: len(checks.read_text()) >= 4, what="checks at the new interval")
    assert daemon.status()["checked"]["pid"] == pid


def test_a_reload_turns_the_spare_of_a_running_driver_off_and_on(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    pid = daemon.wait_state("alpha", "RUNNING")["pid"]
    _, spare = spare_of(daemon, "alpha")
    reload_with(daemon, restart={"spare": False})
    wait_for(lambda: daemon.status()["alpha"]["spare_pid"] is None, what="the spare gone")
    wait_for(lambda: not pid_alive(spare), what="the spare reaped")
    reload_with(daemon, restart={"spare": True})
    _, fresh = spare_of(daemon, "alpha")
    assert fresh != spare
    assert daemon.status()["alpha"]["pid"] == pid


def test_a_reloaded_log_setting_hands_a_running_driver_to_a_new_process(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha"))
    pid = daemon.wait_state("alpha", "RUNNING")["pid"]
    config = yaml.safe_load(daemon.config_path.read_text())
    config["logs"] = {"max_bytes": 4096}
    config["mailbox_size"] = 5  # fixed at start: kept, and said so
    daemon.config_path.write_text(yaml.safe_dump(config))
    reloaded = daemon.ctl("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert json.loads(reloaded.stdout) == {
        "reloaded": True,
        "changed_drivers": ["alpha"],
        "restart_needed": ["mailbox_size"],
    }
    wait_for(
        lambda: (r := daemon.status()["alpha"])["state"] == "RUNNING" and r["pid"] != pid,
        what="alpha handed over to a process with the new log settings",
    )
    assert "reload: mailbox_size changed; it takes effect when drivebayd restarts" in daemon.log()


REFUSING_ATTACH = """
import os

PROCESS = os.urandom(8).hex()  # which process answered (pids are namespaced)


class AlphaDriver:
    def __init__(self, resource_id, properties):
        self.resource_id = resource_id

    async def attach(self):
        if os.environ.get("REFUSE_ATTACH"):
            raise RuntimeError("attach refused by REFUSE_ATTACH")

    async def echo(self, text):
        return {"process": PROCESS, "text": text}
"""


def test_a_replacement_whose_attach_fails_leaves_the_old_process_serving(daemon, tmp_path):
    daemon.drop(build(tmp_path, "alpha", src={"alpha.py": REFUSING_ATTACH}))
    pid = daemon.wait_state("alpha", "RUNNING")["pid"]
    assert daemon.ctl("resource", "add", "r1", "--driver", "alpha").returncode == 0
    before = json.loads(daemon.ctl("call", "r1", "echo", "text=before").stdout)["process"]
    config = yaml.safe_load(daemon.config_path.read_text())
    config["drivers"] = {"alpha": {"env": {"REFUSE_ATTACH": "1"}}}
    daemon.config_path.write_text(yaml.safe_dump(config))
    reloaded = daemon.ctl("reload")
    assert json.loads(reloaded.stdout)["changed_drivers"] == ["alpha"], reloaded.stderr
    wait_for(
        lambda: (
            "replacement of alpha@1.0.0 failed" in daemon.log()
            or "moving every resource back to alpha@1.0.0" in daemon.log()
        ),
        what="the replacement given up",
    )

    def alpha_rows() -> list[dict[str, Any]]:
        listed = json.loads(daemon.ctl("status", "--json").stdout)
        return [row for row in listed if row["name"] == "alpha"]

    wait_for(lambda: len(alpha_rows()) == 1, what="only one alpha left in status")
    [row] = alpha_rows()
    assert (row["state"], row["pid"]) == ("RUNNING", pid)
    called = daemon.ctl("call", "r1", "echo", "text=still")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["process"] == before
    again = daemon.ctl("reload")  # a reconciling pass with the same settings: not tried again
    assert json.loads(again.stdout)["changed_drivers"] == [], again.stderr
    assert daemon.log().count("handing it over to a new process") == 1
