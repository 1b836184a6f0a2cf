"""The state store under a real daemon: a file deleted, replaced or that
cannot be written never leaves an answer that is not the truth, now and
after a restart."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from tests.e2e.harness import BIN, FAST_CONFIG, Daemon, wait_for
from tests.e2e.test_resources import mis_daemon, misbehave_bundle, ok, version_states

CHANGES = (
    ("resource", "add", "v2", "--driver", "mis", "host=b"),
    ("resource", "set", "v1", "host=c"),
    ("resource", "rm", "v1"),
    ("resource", "pin", "v1", "1.0.0"),
)


def rows(daemon: Daemon) -> list[tuple[str, dict[str, Any], str | None]]:
    listed = json.loads(ok(daemon.ctl("resources", "--json")).stdout)
    return [(row["id"], row["properties"], row["pinned"]) for row in listed]


def call(daemon: Daemon, resource: str, op: str, *args: str) -> Any:
    return json.loads(ok(daemon.ctl("call", resource, op, *args)).stdout)


def unchanged_and_serving(daemon: Daemon) -> None:
    """v1 as it was before the refused changes, attached and serving; no v2."""
    assert rows(daemon) == [("v1", {"host": "a"}, None)]
    assert call(daemon, "v1", "describe")["properties"] == {"host": "a"}
    assert call(daemon, "v1", "attached_here") == ["v1"]  # no instance of v2 left behind
    assert daemon.ctl("call", "v2", "echo").returncode == 4


def restarted(daemon: Daemon) -> Daemon:
    assert daemon.stop() == 0
    assert "Task was destroyed but it is pending" not in daemon.log()
    daemon.start()
    daemon.wait_state("mis", "RUNNING")
    return daemon


def test_a_deleted_state_store_refuses_every_change(daemon_factory, tmp_path):
    daemon = mis_daemon(daemon_factory, tmp_path)
    store = daemon.state / "resources.db"
    store.unlink()
    refusal = f"drivebayctl: state store {store} was deleted or replaced; restart drivebayd"
    for change in CHANGES:
        refused = daemon.ctl(*change)
        assert (refused.returncode, refused.stderr.splitlines()) == (1, [refusal]), change
    unchanged_and_serving(daemon)
    # One error line however many changes were refused (each refusal has its
    # own audit line, at INFO, from logger drivebay.audit).
    log = daemon.log().splitlines()
    said = [line for line in log if "was deleted or replaced" in line and " audit" not in line]
    assert len(said) == 1 and " ERROR " in said[0], said
    # Nothing was acknowledged, so nothing acknowledged is lost: the new
    # daemon starts on an empty store, as the operator's deletion asked.
    assert rows(restarted(daemon)) == []


def test_a_state_store_renamed_over_refuses_every_change(daemon_factory, tmp_path):
    daemon = mis_daemon(daemon_factory, tmp_path)
    store = daemon.state / "resources.db"
    backup = daemon.state / "backup.db"
    with closing(sqlite3.connect(store)) as live, closing(sqlite3.connect(backup)) as copy:
        live.backup(copy)  # a backup with v1, as an operator restores it
    backup.rename(store)
    refusal = f"drivebayctl: state store {store} was deleted or replaced; restart drivebayd"
    for change in CHANGES:
        refused = daemon.ctl(*change)
        assert (refused.returncode, refused.stderr.splitlines()) == (1, [refusal]), change
    unchanged_and_serving(daemon)
    assert rows(restarted(daemon)) == [("v1", {"host": "a"}, None)]  # the restored file


@contextmanager
def locked(store: Path) -> Iterator[None]:
    """Another program holds the write lock: every write of the daemon fails
    (after its busy timeout), for root as for anyone, and reads go on."""
    with closing(sqlite3.connect(store, timeout=0, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


def test_a_store_that_cannot_be_written_changes_nothing(daemon_factory, tmp_path):
    """Each change is one unit: refused by the store, it is not live, not
    half-done in the driver, and a retry starts afresh."""
    daemon = mis_daemon(daemon_factory, tmp_path)
    store = daemon.state / "resources.db"
    with locked(store):
        for change in CHANGES:
            refused = daemon.ctl(*change)
            assert refused.returncode == 1, change
            assert refused.stderr.splitlines() == [
                f"drivebayctl: {store}: cannot write the resource database (database is "
                "locked); check the free space and that the file and the state dir are "
                "writable, and stop other programs using it"
            ], change
            unchanged_and_serving(daemon)
    ok(daemon.ctl("resource", "add", "v2", "--driver", "mis", "host=b"))  # not "already exists"
    ok(daemon.ctl("resource", "set", "v1", "host=c"))
    assert call(daemon, "v2", "attached_here") == ["v1", "v2"]
    assert rows(restarted(daemon)) == [("v1", {"host": "c"}, None), ("v2", {"host": "b"}, None)]


def test_a_change_the_driver_refuses_is_stored_back(daemon_factory, tmp_path):
    """set and pin are stored before they are applied: one the driver does
    not take (here its attach passes the call timeout) is stored back."""
    config = {"timeouts": {**FAST_CONFIG["timeouts"], "call_s": 2}}
    daemon = mis_daemon(daemon_factory, tmp_path, config)
    refused = daemon.ctl("resource", "set", "v1", "host=b", "attach_delay=30")
    assert refused.returncode == 1
    assert refused.stderr.startswith("drivebayctl: mis refused the new properties of v1: ")
    wait_for(lambda: rows(daemon) == [("v1", {"host": "a"}, None)], what="v1 as it was")
    wait_for(lambda: call(daemon, "v1", "attached_here") == ["v1"], what="v1 attached again")
    assert rows(restarted(daemon)) == [("v1", {"host": "a"}, None)]


def test_start_of_a_failed_version_the_store_refuses_leaves_it_failed(daemon_factory, tmp_path):
    """``start`` gives a FAILED version a new chance only once the store has
    forgotten the failure: refused, it stays FAILED now and after a restart."""
    daemon = mis_daemon(daemon_factory, tmp_path)
    daemon.drop(misbehave_bundle(daemon.staging, "1.1.0", healthy=False))
    failed = [("1.0.0", "RUNNING"), ("1.1.0", "FAILED")]
    wait_for(lambda: version_states(daemon) == failed, what="1.1.0 FAILED")
    with locked(daemon.state / "resources.db"):
        since = len(daemon.log())
        refused = daemon.ctl("start", "mis@1.1.0")
        assert refused.returncode == 1, refused
        assert "cannot write the resource database" in refused.stdout + refused.stderr, refused
        ok(daemon.ctl("reload"))  # a reconcile must not take it for a new chance either
        assert version_states(daemon) == failed
        assert "spawned: mis@1.1.0" not in daemon.log()[since:]
    daemon.stop()
    daemon.start()
    wait_for(lambda: version_states(daemon) == failed, what="still FAILED after a restart")


def test_a_stopping_daemon_refuses_changes_and_still_answers_status(daemon_factory, tmp_path):
    """While it drains on its way out (its store about to close), a change is
    refused in one line, not half done against a closed database."""
    daemon = mis_daemon(daemon_factory, tmp_path, {"timeouts": {"drain_s": 6}})
    assert daemon.process is not None
    calling = subprocess.Popen(  # a sync call stuck in its thread holds the stop
        [*ctl_argv(daemon), "call", "v1", "slow_sync", "seconds:=60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: rows_queued(daemon) == 1, what="the call in flight")
        daemon.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM: stopping" in daemon.log(), what="the daemon stopping")
        for change in (("resource", "add", "v2", "--driver", "mis", "host=b"), *CHANGES[1:]):
            refused = daemon.ctl(*change)
            assert (refused.returncode, refused.stderr) == (
                7,
                "drivebayctl: drivebayd is stopping; retry once it has started again\n",
            ), change
        assert daemon.ctl("status").returncode in (0, 3)
    finally:
        calling.wait(timeout=60)
    assert daemon.process.wait(timeout=60) == 0
    assert "internal error" not in daemon.log()


def rows_queued(daemon: Daemon) -> int:
    listed = json.loads(ok(daemon.ctl("resources", "--json")).stdout)
    return sum(row["queued"] for row in listed)


def ctl_argv(daemon: Daemon) -> list[str]:
    return [str(BIN / "drivebayctl"), "-s", str(daemon.socket)]


def test_a_resource_being_removed_cannot_be_added_again_until_it_is_gone(daemon_factory, tmp_path):
    """``rm`` closes the actor, which waits for the operation in flight and
    then detaches; an ``add`` of the same id meanwhile would attach a new
    instance that the old actor's detach then took away."""
    daemon = mis_daemon(daemon_factory, tmp_path)
    calling = subprocess.Popen(  # a sync operation holds the removal for its 8 s
        [*ctl_argv(daemon), "call", "v1", "slow_sync", "seconds:=8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    removing = None
    try:
        wait_for(lambda: rows_queued(daemon) == 1, what="the call in flight")
        removing = subprocess.Popen(
            [*ctl_argv(daemon), "resource", "rm", "v1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: rows(daemon) == [], what="v1 gone from the list")
        again = daemon.ctl("resource", "add", "v1", "--driver", "mis", "host=a")
        assert removing.poll() is None, "the removal ended before the add was tried"
        assert (again.returncode, again.stderr) == (
            1,
            "drivebayctl: resource v1 is being removed by another request; add it again "
            "once that is done\n",
        )
    finally:
        calling.wait(timeout=60)
        if removing is not None:
            assert removing.wait(timeout=60) == 0
    ok(daemon.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    assert call(daemon, "v1", "attached_here") == ["v1"]
