"""A clustered ``drivebayd`` stopped (SIGTERM) with calls in flight: it lets
them finish on its own driver and records their results before its leases
end, so that no other node takes the resource over (and settles, or runs
again, a call still running here); its waiting callers get their answers,
and it exits within its deadlines. A caller whose call another node has not
finished by then is answered that it stays queued (never a closed
connection)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from drivebay.client import AsyncClient, OperationError
from tests.cluster.daemons import Tables, clustered
from tests.cluster.test_daemon_calls import all_owned, operations, owners, two_nodes
from tests.cluster.test_link_cut import own_server  # noqa: F401 -- fixture
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import FAST_CONFIG, wait_for
from tests.postgres import ThrowawayPostgres


def test_a_node_stopped_with_calls_in_flight_finishes_them_before_it_leaves(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    a, _ = two_nodes(daemon_factory, database, tmp_path)
    for resource in ("r0", "r1", "r2", "r3"):
        assert a.ctl("resource", "add", resource, "--driver", "ledger").returncode == 0
    owned = wait_for(lambda: two_each(database), 30, "two resources on each node")
    on_a, stuck_on = sorted(r for r, (owner, _) in owned.items() if owner == "node-a")
    on_b = min(r for r, (owner, _) in owned.items() if owner == "node-b")
    epoch_a = owned[on_a][1]

    def in_flight() -> bool:
        ops = operations(database)
        return sum(op[2] == "slow" and op[3] == "dispatched" for op in ops) == 3

    async def main() -> dict[str, Any]:
        async with AsyncClient(str(a.socket)) as client, asyncio.timeout(60):
            # Seconds longer than a lease: leaving at once would let node-b
            # claim on_a and settle its call while it still runs here.
            mine = asyncio.ensure_future(client.call(on_a, "slow", {"seconds": 2.5}, timeout=30))
            theirs = asyncio.ensure_future(client.call(on_b, "slow", {"seconds": 2.5}, timeout=30))
            after = asyncio.ensure_future(client.call(on_a, "write", {"value": "w"}, timeout=30))
            # Still running on node-b when node-a has waited drain_s for it.
            longer = asyncio.ensure_future(client.call(on_b, "slow", {"seconds": 7}, timeout=30))
            # Running here past drain_s: node-a leaves without it (the heir
            # settles it) rather than wait until its task is cancelled.
            stuck = asyncio.ensure_future(
                client.call(stuck_on, "slow", {"seconds": 30}, timeout=40)
            )
            await asyncio.to_thread(wait_for, in_flight, 30, "both slow calls sent")
            assert a.process is not None
            a.process.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            answers = {"mine": await mine, "theirs": await theirs, "after": await after}
            with pytest.raises(OperationError) as stays:
                await longer
            answers["longer"] = stays.value
            with pytest.raises(OperationError):
                await stuck
            code = await asyncio.to_thread(a.process.wait, 60)
            answers["exit"] = (code, time.monotonic() - stopped)
            return answers

    answers = asyncio.run(main())
    # Run here, under node-a's epoch, answered with the driver's own result.
    assert answers["mine"] == {"slept": 2.5, "epoch": epoch_a}, answers
    assert answers["theirs"]["slept"] == 2.5, answers
    stays = answers["longer"]
    assert stays.type == "CallTimeout" and "node-a is stopping" in stays.message, stays
    assert "stays queued and runs once" in stays.message, stays
    (longer,) = [op for op in operations(database) if op[2] == "slow" and op[1] == on_b][1:]
    assert longer[3] in ("queued", "dispatched", "done") and f"#{longer[0]}" in stays.message
    code, took = answers["exit"]
    assert code == 0 and took < FAST_CONFIG["timeouts"]["drain_s"] + 2 * 0.5 + 1 + 5, answers
    log = a.log()
    assert "calls still in flight after 3 s; node node-a leaves" in log, log
    assert "did not leave in time" not in log, log
    by_op = {op[2]: op for op in operations(database) if op[1] == on_a}
    assert by_op["slow"][3] == "done" and by_op["slow"][5] == epoch_a, by_op
    assert by_op["write"][3] == "done" and by_op["write"][6]["times"] == 1, by_op
    # node-a left: node-b owns both, on_a under a greater epoch.
    moved = wait_for(
        lambda: {o for o, _ in owners(database).values()} == {"node-b"} and owners(database),
        30,
        "node-b owns both",
    )
    assert moved[on_a][1] > epoch_a


def two_each(database: str) -> dict[str, tuple[str | None, int]] | None:
    found = all_owned(database, 4)
    held = Counter(owner for owner, _ in (found or {}).values())
    return found if held == {"node-a": 2, "node-b": 2} else None


def test_a_node_whose_database_is_down_stops_without_waiting_out_its_bound(
    own_server: ThrowawayPostgres,  # noqa: F811 -- first: it outlives the daemon
    daemon_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """It cannot leave (its leases will expire); its queue workers end at
    once rather than hold the stop until the node's task is cancelled."""
    database = own_server.url()
    tables = Tables(database)
    alone = clustered(daemon_factory, database, "alone", tmp_path / "staging")
    alone.start()
    tables.wait_running(["alone"], "mis")
    for resource in ("r0", "r1"):
        added = alone.ctl("resource", "add", resource, "--driver", "mis", "host=h")
        assert added.returncode == 0, added.stderr
    wait_for(lambda: len([o for o, _ in tables.owners().values() if o]) == 2, 30, "all owned")
    own_server.shut_down()
    wait_for(lambda: "cluster database" in alone.log(), 30, "the node sees the database gone")
    assert alone.stop() == 0, alone.log()
    assert "did not leave in time" not in alone.log(), alone.log()
