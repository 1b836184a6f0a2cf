"""Zero-loss hot upgrade, shown with a ledger (issue 5, section 5).

100 resources each receive a steady stream of operations from concurrent
callers over the control API while 10 new versions arrive back to back and
10 property changes are made. The driver writes a ledger line per operation;
the test then checks every guarantee against it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import uvloop

from drivebay.client import AsyncClient
from tests.e2e.harness import Daemon, templates_of, wait_for
from tests.e2e.ledger import ledger_bundle, read_ledger
from tests.helpers import children_of

RESOURCES = 100
IN_FLIGHT_PER_RESOURCE = 3


def daemon_with_ledger(daemon_factory, tmp_path: Path) -> tuple[Daemon, Path]:
    ledger = tmp_path / "ledger.jsonl"
    daemon = daemon_factory(config={"drivers": {"ledger": {"env": {"LEDGER_PATH": str(ledger)}}}})
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(ledger_bundle(staging, "1.0.0"))
    daemon.start()
    daemon.wait_state("ledger", "RUNNING")
    return daemon, ledger


def only_version_running(daemon: Daemon, version: str) -> bool:
    rows = [row for row in daemon.status().values() if row["name"] == "ledger"]
    return len(rows) == 1 and rows[0]["version"] == version and rows[0]["state"] == "RUNNING"


class Load:
    """Callers keeping a few operations in flight on every resource."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.ids = itertools.count(1)
        self.sent: dict[int, str] = {}  # op id -> resource
        self.replies: dict[int, Any] = defaultdict(list)
        self.failures: list[str] = []
        self.stop = asyncio.Event()

    async def resource_loop(self, resource: str) -> None:
        seq = itertools.count(1)
        pending: set[asyncio.Task[None]] = set()
        while not self.stop.is_set():
            while len(pending) < IN_FLIGHT_PER_RESOURCE:
                pending.add(asyncio.ensure_future(self.one(resource, next(seq))))
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)

    async def one(self, resource: str, seq: int) -> None:
        op_id = next(self.ids)
        self.sent[op_id] = resource
        try:
            reply = await self.client.call(resource, "record", {"number": op_id, "seq": seq})
        except Exception as exc:
            self.failures.append(f"{resource} op {op_id}: {exc}")
            return
        self.replies[op_id].append(reply)


async def drive(daemon: Daemon, tmp_path: Path, versions: list[str], healthy: bool) -> Load:
    client = await AsyncClient.connect(str(daemon.socket))
    admin = await AsyncClient.connect(str(daemon.socket))
    try:
        for n in range(RESOURCES):
            await admin.request(
                "resource-add", {"id": f"r{n:03}", "driver": "ledger", "assignments": []}
            )
        load = Load(client)
        callers = [asyncio.ensure_future(load.resource_loop(f"r{n:03}")) for n in range(RESOURCES)]
        rng = random.Random(7)
        staging = tmp_path / "staging"
        for index, version in enumerate(versions):
            await wait_ops(load, 300)
            daemon.drop(ledger_bundle(staging, version, healthy=healthy))
            if healthy:
                await asyncio.to_thread(
                    wait_for, lambda v=version: only_version_running(daemon, v), 120, f"{version}"
                )
            else:
                await asyncio.to_thread(daemon.wait_state, "ledger", "FAILED", 120)
            resource = f"r{rng.randrange(RESOURCES):03}"
            await admin.request(
                "resource-set", {"id": resource, "assignments": [f"colour=c{index}"]}
            )
        await wait_ops(load, 300)
        load.stop.set()
        await asyncio.gather(*callers)
        return load
    finally:
        await client.close()
        await admin.close()


async def wait_ops(load: Load, more: int) -> None:
    """Let at least ``more`` further operations complete (bounded)."""
    target = len(load.replies) + more
    async with asyncio.timeout(60):
        while len(load.replies) < target:
            await asyncio.sleep(0.01)


def descendants(pids: list[int]) -> set[int]:
    """``pids`` and all their descendants alive now."""
    found: set[int] = set()
    while pids:
        found.update(pids)
        pids = [child for pid in pids for child in children_of(pid)]
    return found


def daemon_children(daemon: Daemon) -> list[int]:
    assert daemon.process is not None
    return children_of(daemon.process.pid)


def test_ten_upgrades_under_load_lose_nothing(daemon_factory, tmp_path):
    daemon, ledger = daemon_with_ledger(daemon_factory, tmp_path)
    versions = [f"1.0.{n}" for n in range(1, 11)]
    load = uvloop.run(drive(daemon, tmp_path, versions, healthy=True))
    ops, health = read_ledger(ledger)

    # (1) every accepted operation got exactly one reply, none failed
    assert load.failures == []
    assert set(load.replies) == set(load.sent)
    assert all(len(replies) == 1 for replies in load.replies.values())
    # (2) no operation ran twice
    ran = [op["op_id"] for op in ops]
    assert len(ran) == len(set(ran)) == len(load.sent)
    by_resource: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for op in sorted(ops, key=lambda op: op["start"]):
        by_resource[op["resource"]].append(op)
    order = {v: i for i, v in enumerate(["1.0.0", *versions])}
    for resource, runs in by_resource.items():
        # (3) sequence numbers strictly increase, versions never go backwards
        seqs = [op["seq"] for op in runs]
        assert seqs == sorted(set(seqs)), f"{resource} reordered"
        ranks = [order[op["version"]] for op in runs]
        assert ranks == sorted(ranks), f"{resource} went back a version"
        # (4) no two operations of a resource overlap, even across processes
        for before, after in itertools.pairwise(runs):
            assert before["end"] <= after["start"], f"{resource} overlapped"
    # (5) no operation reached a process before its health check passed
    healthy_at = {h["pid"]: h["at"] for h in sorted(health, key=lambda h: -h["at"]) if h["ok"]}
    for op in ops:
        assert op["start"] >= healthy_at[op["pid"]]
    # every version served operations
    per_version = {v: sum(op["version"] == v for op in ops) for v in order}
    print(f"{len(ops)} operations on {len(by_resource)} resources; per version {per_version}")
    assert {op["version"] for op in ops} == set(order)
    # property changes took effect between operations
    assert any(op["colour"] for op in ops)
    # (6) each old process exited 0 after draining; one process remains
    log = daemon.log()
    for version in ["1.0.0", *versions[:-1]]:
        assert f"stopped: ledger@{version} (exit status 0)" in log, log
    # One process for the version in use (plus its idle spare, see restart.spare),
    # each the daemon's child or, in its PID namespace, a descendant of it
    # (and, with spawn: fork-server, the env's template).
    row = daemon.status()["ledger"]
    assert daemon.process is not None
    spawners = templates_of(daemon.process.pid)
    children = [pid for pid in daemon_children(daemon) if pid not in spawners]
    assert len(children) <= 2
    assert {row["pid"], row["spare_pid"]} - {None} <= descendants(children)
    fds = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
    assert fds < 40, f"daemon holds {fds} fds after the upgrades"


def test_failed_health_check_reaches_nobody(daemon_factory, tmp_path):
    daemon, ledger = daemon_with_ledger(daemon_factory, tmp_path)
    load = uvloop.run(drive(daemon, tmp_path, ["2.0.0"], healthy=False))
    ops, health = read_ledger(ledger)
    assert load.failures == []
    assert all(len(replies) == 1 for replies in load.replies.values())
    assert set(load.replies) == set(load.sent)
    assert {op["version"] for op in ops} == {"1.0.0"}
    assert any(not h["ok"] and h["version"] == "2.0.0" for h in health)
    status = daemon.status()
    assert status["ledger"]["state"] in ("RUNNING", "FAILED")
    rows = {(r["name"], r["version"]): r for r in status.values()}
    assert rows  # both versions listed: 1.0.0 serving, 2.0.0 FAILED
    assert daemon.ctl("status", "ledger@1.0.0").returncode == 0
    failed = daemon.ctl("status", "ledger@2.0.0", "--json")
    assert '"FAILED"' in failed.stdout and "failed its first health check" in failed.stdout
