"""``drain-node`` under load between two real ``drivebayd`` nodes: callers
keep calling every resource, through node-a's control socket (as
drivebayctl does) and node-b's HTTP socket, while node-b is drained. A
driver-written ledger (one file both nodes' driver processes append to, as a
device would remember) shows every accepted call run exactly once, none
lost, and each caller's calls to a resource run in the order it made them;
the resources node-b held ran on both nodes' drivers, node-b's first."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from drivebay.client import AsyncClient
from tests.cluster.test_daemon_drain import holding
from tests.cluster.test_daemon_nodes import TIMINGS
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import Daemon, wait_for
from tests.e2e.ledger import ledger_bundle, read_ledger

RESOURCES = 6
CALLERS = 2  # per resource: one through node-a's control socket, one through node-b's HTTP


def ledger_node(daemon_factory: Any, database: str, node_id: str, ledger: Path) -> Daemon:  # noqa: F811
    config = {
        "cluster": {"database": database, "node_id": node_id, **TIMINGS},
        "drivers": {"ledger": {"env": {"LEDGER_PATH": str(ledger)}}},
    }
    made: Daemon = daemon_factory(node_id, config)
    return made


class Load:
    """Callers, each calling one resource again and again, one call at a time."""

    def __init__(self) -> None:
        self.numbers = itertools.count(1)
        self.made: dict[int, tuple[str, int, int]] = {}  # number -> (resource, caller, turn)
        self.answered: Counter[int] = Counter()
        self.failures: list[str] = []
        self.stop = asyncio.Event()

    async def caller(self, client: AsyncClient, resource: str, caller: int) -> None:
        for turn in itertools.count():
            if self.stop.is_set():
                return
            number = next(self.numbers)
            self.made[number] = (resource, caller, turn)
            try:
                await client.call(resource, "record", {"number": number, "seq": turn}, timeout=30)
            except Exception as exc:
                self.failures.append(f"{resource} #{number}: {type(exc).__name__}: {exc}")
                return
            self.answered[number] += 1

    async def more(self, count: int) -> None:
        """Let ``count`` further calls be answered (bounded)."""
        target = sum(self.answered.values()) + count
        async with asyncio.timeout(60):
            while sum(self.answered.values()) < target and not self.failures:
                await asyncio.sleep(0.01)


def test_draining_a_node_under_load_loses_repeats_and_reorders_nothing(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    a = ledger_node(daemon_factory, database, "node-a", ledger)
    b = ledger_node(daemon_factory, database, "node-b", ledger)
    for daemon, name in ((a, "sa"), (b, "sb")):
        staging = tmp_path / name
        staging.mkdir()
        daemon.drop(ledger_bundle(staging, "1.0.0"))
        daemon.start()
    for daemon in (a, b):
        daemon.wait_state("ledger", "RUNNING")
    ids = [f"r{n}" for n in range(RESOURCES)]
    for resource in ids:
        added = a.ctl("resource", "add", resource, "--driver", "ledger")
        assert added.returncode == 0, (added.stderr, a.log())
    half = RESOURCES // 2
    wait_for(functools.partial(holding, a, {"node-a": half, "node-b": half}), 30, "spread")

    async def main() -> tuple[Load, dict[str, Any]]:
        load = Load()
        async with (
            AsyncClient(str(a.socket)) as on_a,
            AsyncClient(http=f"unix:{b.state / 'http.sock'}") as on_b,
        ):
            callers = [
                asyncio.ensure_future(load.caller(client, resource, caller))
                for resource in ids
                for caller, client in enumerate((on_a, on_b))
            ]
            try:
                await load.more(60)
                ran = await asyncio.to_thread(
                    a.ctl, "drain-node", "node-b", "--wait", "--timeout", "30", "--json"
                )
                assert ran.returncode == 0, (ran.stderr, a.log(), b.log())
                await load.more(60)  # all on node-a now, still called through both
            finally:
                load.stop.set()
                await asyncio.gather(*callers)
        return load, json.loads(ran.stdout)

    load, drained = asyncio.run(main())
    assert load.failures == []
    assert (drained["state"], drained["resources"]) == ("draining", 0)
    rows = holding(b, {"node-a": RESOURCES, "node-b": 0})
    assert rows is not None and rows["node-b"]["state"] == "draining"

    ops, _ = read_ledger(ledger)
    ran_times = Counter(op["op_id"] for op in ops)
    assert set(ran_times) == set(load.made)  # none lost (and none the callers did not make)
    assert set(ran_times.values()) == {1}  # none run twice
    assert set(load.answered) == set(load.made) and set(load.answered.values()) == {1}
    turns: dict[tuple[str, int], list[int]] = defaultdict(list)
    pids: dict[str, list[int]] = defaultdict(list)
    for op in ops:
        resource, caller, turn = load.made[op["op_id"]]
        assert op["resource"] == resource
        turns[resource, caller].append(turn)
        if not pids[resource] or pids[resource][-1] != op["pid"]:
            pids[resource].append(op["pid"])
    for made in turns.values():
        assert made == sorted(made)  # none reordered
    assert len(turns) == RESOURCES * CALLERS
    moved = [r for r, seen in pids.items() if len(seen) == 2]
    assert len(moved) == half, pids  # node-b's resources: its driver, then node-a's
    assert all(len(seen) == 1 for r, seen in pids.items() if r not in moved), pids
