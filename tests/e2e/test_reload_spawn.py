"""A reload that flips ``spawn:`` and ``scheduling:`` under load: a real daemon.

The ledger driver serves a steady stream of operations on a few resources
while the config goes fork-server/normal -> exec/batch -> fork-server/normal,
each applied with ``drivebayctl reload``. Each reload hands the running
driver over to a new process made as the config now says (a forked one shows
as ``drivebay NAME@VERSION``, an exec'd one is a new interpreter; batch is
SCHED_BATCH); the ledger shows no operation lost, run twice or reordered;
and the templates live exactly while ``spawn: fork-server`` is configured.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import uvloop
import yaml

from drivebay.client import AsyncClient
from tests.e2e.harness import Daemon, pid_alive, templates_of, wait_for
from tests.e2e.ledger import read_ledger
from tests.e2e.test_upgrade import Load, daemon_with_ledger, wait_ops
from tests.helpers import children_of

RESOURCES = 10
PHASES = [("exec", "batch"), ("fork-server", "normal")]


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read()


def reconfigure(daemon: Daemon, spawn: str, scheduling: str) -> None:
    settings = yaml.safe_load(daemon.config_path.read_text())
    daemon.config_path.write_text(
        yaml.safe_dump({**settings, "spawn": spawn, "scheduling": scheduling})
    )
    reloaded = daemon.ctl("reload")
    assert reloaded.returncode == 0, (reloaded.stdout, reloaded.stderr)


def handed_over(daemon: Daemon, old_pid: int) -> bool:
    row = daemon.status()["ledger"]
    return row["state"] == "RUNNING" and row["pid"] != old_pid and not pid_alive(old_pid)


def check_made_as(pid: int, spawn: str, scheduling: str) -> None:
    forked = b"drivebay ledger@1.0.0" in cmdline(pid)
    assert forked == (spawn == "fork-server"), cmdline(pid)
    batch = os.sched_getscheduler(pid) == os.SCHED_BATCH
    assert batch == (scheduling == "batch"), pid


async def drive(daemon: Daemon) -> tuple[Load, list[dict[str, Any]]]:
    client = await AsyncClient.connect(str(daemon.socket))
    admin = await AsyncClient.connect(str(daemon.socket))
    seen: list[dict[str, Any]] = []
    try:
        for n in range(RESOURCES):
            await admin.request(
                "resource-add", {"id": f"r{n:02}", "driver": "ledger", "assignments": []}
            )
        load = Load(client)
        callers = [asyncio.ensure_future(load.resource_loop(f"r{n:02}")) for n in range(RESOURCES)]
        for spawn, scheduling in PHASES:
            await wait_ops(load, 100)
            old = (await asyncio.to_thread(daemon.status))["ledger"]["pid"]
            await asyncio.to_thread(reconfigure, daemon, spawn, scheduling)
            await asyncio.to_thread(wait_for, lambda o=old: handed_over(daemon, o), 60, spawn)
            reply = await admin.call("r00", "record", {"number": 0, "seq": 0})
            check_made_as(reply["pid"], spawn, scheduling)
            seen.append({"spawn": spawn, "pid": reply["pid"]})
            assert daemon.process is not None
            pid = daemon.process.pid
            await asyncio.to_thread(
                wait_for,
                lambda p=pid, s=spawn: bool(templates_of(p)) == (s == "fork-server"),
                30,
                f"templates exactly while fork-server ({spawn})",
            )
        await wait_ops(load, 100)
        load.stop.set()
        await asyncio.gather(*callers)
        return load, seen
    finally:
        await client.close()
        await admin.close()


def test_reload_flipping_spawn_and_scheduling_loses_nothing(daemon_factory, tmp_path: Path):
    daemon, ledger = daemon_with_ledger(daemon_factory, tmp_path)
    assert daemon.process is not None
    first = daemon.status()["ledger"]["pid"]
    load, seen = uvloop.run(drive(daemon))
    ops, _ = read_ledger(ledger)
    ops = [op for op in ops if op["op_id"] != 0]  # the probes above

    assert load.failures == []
    assert set(load.replies) == set(load.sent)
    assert all(len(replies) == 1 for replies in load.replies.values())
    ran = [op["op_id"] for op in ops]
    assert len(ran) == len(set(ran)) == len(load.sent)
    by_resource: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for op in sorted(ops, key=lambda op: op["start"]):
        by_resource[op["resource"]].append(op)
    for resource, runs in by_resource.items():
        seqs = [op["seq"] for op in runs]
        assert seqs == sorted(set(seqs)), f"{resource} reordered"
        for before, after in itertools.pairwise(runs):
            assert before["end"] <= after["start"], f"{resource} overlapped"
    # every process of the three served operations, one after the other
    pids = [first, *(s["pid"] for s in seen)]
    served = {op["pid"] for op in ops}
    assert len(served) >= 3, served

    # Nothing left over: the driver and its spare, and the template.
    pid = daemon.process.pid

    def settled() -> bool:
        row = daemon.status()["ledger"]
        others = set(children_of(pid)) - set(templates_of(pid))
        return len(others) <= 2 and row["spare_pid"] is not None

    wait_for(settled, 30, "the driver, its spare and the template alone")
    assert len(templates_of(pid)) == 1
    assert not any(pid_alive(p) for p in pids[:-1])
