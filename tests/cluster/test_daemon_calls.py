"""Calls through the cluster's queue between real ``drivebayd`` nodes: a
call accepted by either node is queued in PostgreSQL and run once by the
actor of the node that owns the resource (``tests/fixtures/ledger``), with
the queue id as ``op_id`` and the owner's epoch; errors, an unknown or
unrunnable resource and a timeout are answered as one node answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drivebay.client import AsyncClient, OperationError
from tests.cluster.test_daemon_nodes import clustered
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import Daemon, wait_for
from tests.helpers import FIXTURES
from tests.sandbox.bundles import make_bundle

SLOW = """

import asyncio as _asyncio


async def _slow(self, seconds):
    await _asyncio.sleep(seconds)
    return {"slept": seconds, "epoch": self.call_epoch()}


Ledger.slow = _slow
"""


def ledger_bundle(root: Path) -> Path:
    """The ledger fixture as a bundle (``write`` idempotent), with ``slow``."""
    source = (FIXTURES / "ledger" / "src" / "ledger.py").read_text() + SLOW
    return make_bundle(
        root,
        name="ledger",
        manifest_extra={"entrypoint": "ledger:Ledger", "idempotent": ["write"]},
        src={"ledger.py": source},
    )


def owners(database: str) -> dict[str, tuple[str | None, int]]:
    """resource -> (owner with a lease not ended, epoch)."""
    with psycopg.connect(database) as db:
        rows = db.execute(
            "SELECT resource_id, CASE WHEN lease_until > now() THEN owner_node END, epoch"
            " FROM drivebay.ownership"
        ).fetchall()
    return {str(r): (o, int(e)) for r, o, e in rows}


def operations(database: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database) as db:
        return db.execute(
            "SELECT o.id, o.resource_id, o.operation, o.state, o.accepted_by,"
            " o.dispatched_epoch, o.result FROM drivebay.operation o ORDER BY o.id"
        ).fetchall()


def two_nodes(daemon_factory: Any, database: str, tmp_path: Path) -> tuple[Daemon, Daemon]:  # noqa: F811
    a = clustered(daemon_factory, database, "node-a")
    b = clustered(daemon_factory, database, "node-b")
    for daemon, name in ((a, "sa"), (b, "sb")):
        staging = tmp_path / name
        staging.mkdir()
        daemon.drop(ledger_bundle(staging))
        daemon.start()
    for daemon in (a, b):
        daemon.wait_state("ledger", "RUNNING")
    return a, b


def all_owned(database: str, count: int) -> dict[str, tuple[str | None, int]] | None:
    found = owners(database)
    nodes = {owner for owner, _ in found.values()}
    if len(found) == count and None not in nodes and nodes == {"node-a", "node-b"}:
        return found
    return None


def test_a_call_on_either_node_runs_once_on_the_owners_actor(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    a, b = two_nodes(daemon_factory, database, tmp_path)
    resources = [f"r{i}" for i in range(4)]
    for resource in resources:
        added = a.ctl("resource", "add", resource, "--driver", "ledger")
        assert added.returncode == 0, (added.stderr, a.log())
    owned = wait_for(lambda: all_owned(database, 4), 30, "every resource owned, on both nodes")

    async def calls(daemon: Daemon, tag: str) -> list[tuple[str, dict[str, Any]]]:
        async with AsyncClient(str(daemon.socket)) as client, asyncio.timeout(30):
            answers = await asyncio.gather(
                *(
                    client.call(resource, "write", {"value": f"{tag}{n}"}, timeout=10)
                    for n in range(5)
                    for resource in resources
                )
            )
        order = [resource for _ in range(5) for resource in resources]
        return list(zip(order, answers, strict=True))

    async def both() -> list[tuple[str, dict[str, Any]]]:
        answered = await asyncio.gather(calls(a, "a"), calls(b, "b"))
        return answered[0] + answered[1]

    answers = asyncio.run(both())
    stored = {row[0]: row for row in operations(database)}
    assert len(stored) == 40
    for resource, answer in answers:
        op = stored[int(answer["op_id"])]  # the queue's id reached the driver as op_id
        assert op[1] == resource and op[2] == "write" and op[3] == "done"
        assert answer["times"] == 1  # applied once
        assert answer["epoch"] == op[5] == owned[resource][1]  # under the owner's epoch
    accepted = {(op[4], owned[op[1]][0]) for op in stored.values()}
    assert ("node-a", "node-b") in accepted and ("node-b", "node-a") in accepted

    plain = b.ctl("call", "r0", "write", "value=plain", "--json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["result"]["times"] == 1, plain.stdout


def test_errors_are_answered_as_one_node_answers_them(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    a, b = two_nodes(daemon_factory, database, tmp_path)
    assert a.ctl("resource", "add", "r0", "--driver", "ledger").returncode == 0
    assert a.ctl("resource", "add", "r1", "--driver", "ledger").returncode == 0
    owned = wait_for(lambda: all_owned(database, 2), 30, "both resources owned")
    elsewhere = {owner: resource for resource, (owner, _) in owned.items()}
    on_b = elsewhere["node-b"]  # called through node-a: its owner is the other node

    async def failing(
        daemon: Daemon, resource: str, op: str, args: dict[str, Any], timeout: float = 10
    ) -> OperationError:
        async with AsyncClient(str(daemon.socket)) as client, asyncio.timeout(30):
            with pytest.raises(OperationError) as failed:
                await client.call(resource, op, args, timeout=timeout)
        return failed.value

    unknown = asyncio.run(failing(a, on_b, "nope", {}))
    assert unknown.type == "OperationFailed", unknown  # as one node answers it
    assert unknown.message == (
        "UnknownOperation: driver has no operation 'nope' (operations: plain, slow, write, "
        "write_sync)"
    ), unknown.message
    raised = asyncio.run(failing(a, on_b, "write", {}))  # a missing argument: TypeError
    assert raised.type == "OperationFailed" and raised.message.startswith("TypeError: "), raised

    missing = a.ctl("call", "ghost", "write", "value=1")
    assert missing.returncode == 4 and len(missing.stderr.splitlines()) == 1, missing.stderr
    assert "no such resource: ghost" in missing.stderr

    with psycopg.connect(database, autocommit=True) as db:
        db.execute("INSERT INTO drivebay.resource (id, driver) VALUES ('lost', 'nobody')")
        db.execute("INSERT INTO drivebay.ownership (resource_id) VALUES ('lost')")
    nobody = b.ctl("call", "lost", "write", "value=1")
    assert nobody.returncode != 0 and len(nobody.stderr.splitlines()) == 1, nobody.stderr
    assert "no live node" in nobody.stderr and "nobody" in nobody.stderr

    late = asyncio.run(failing(a, on_b, "slow", {"seconds": 1.5}, timeout=0.3))
    assert late.type == "CallTimeout", late
    (slow,) = [op for op in operations(database) if op[2] == "slow"]
    assert f"#{slow[0]}" in late.message and "runs once" in late.message, late.message
    wait_for(
        lambda: [op[3] for op in operations(database) if op[2] == "slow"] == ["done"],
        30,
        "the slow call done after its caller gave up",
    )
