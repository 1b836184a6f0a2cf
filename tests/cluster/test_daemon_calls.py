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
from tests.cluster.test_daemon_nodes import TIMINGS, clustered
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import Daemon, wait_for
from tests.e2e.test_authorization import over_tcp, sha
from tests.e2e.test_http_api import free_port
from tests.helpers import FIXTURES
from tests.sandbox.bundles import make_bundle

SLOW = """

import asyncio as _asyncio


async def _slow(self, seconds):
    await _asyncio.sleep(seconds)
    return {"slept": seconds, "epoch": self.call_epoch()}


Ledger.slow = _slow


async def _raw(self):  # what JSON holds otherwise: bytes, an integer key
    return {"raw": b"\\x00\\xff", 7: "int key"}


Ledger.raw = _raw
_init = Ledger.__init__


def _init_keeping(self, resource_id, properties, call_epoch):
    if properties.get("label") == "refuse":
        raise ValueError("this label is refused")
    _init(self, resource_id, properties, call_epoch)
    self.kept = dict(properties)


async def _properties(self):
    return self.kept


Ledger.__init__ = _init_keeping
Ledger.properties = _properties
"""


def ledger_bundle(root: Path) -> Path:
    """The ledger fixture as a bundle (``write`` idempotent), with ``slow``,
    ``raw``, a ``label`` property (``refuse``: its attach fails), ``since``
    (a date), ``size`` (a number) and ``properties``."""
    source = (FIXTURES / "ledger" / "src" / "ledger.py").read_text() + SLOW
    return make_bundle(
        root,
        name="ledger",
        manifest_extra={
            "entrypoint": "ledger:Ledger",
            "idempotent": ["write"],
            "properties": [
                {"key": "label", "type": "string"},
                {"key": "since", "type": "date"},
                {"key": "size", "type": "number"},
            ],
        },
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


def terminate_listeners(database: str) -> int:
    """End each node's listening connection (its last statement a LISTEN)."""
    with psycopg.connect(database) as db:
        rows = db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'drivebayd %%' AND query LIKE 'LISTEN%%'"
        ).fetchall()
    return sum(1 for (ended,) in rows if ended)


def two_nodes(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
    settings_a: dict[str, Any] | None = None,
) -> tuple[Daemon, Daemon]:
    """node-a (with ``settings_a`` added to its config) and node-b, both
    running the ledger driver."""
    if settings_a:
        cluster = {"database": database, "node_id": "node-a", **TIMINGS}
        a = daemon_factory("node-a", {"cluster": cluster, **settings_a})
    else:
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


def one_on_each(a: Daemon, database: str, *extra: str) -> tuple[str, str]:
    """Resources r0 and r1 added through node ``a`` (``extra``: more
    arguments of ``resource add``), once each node owns one: (node-a's,
    node-b's)."""
    for resource in ("r0", "r1"):
        added = a.ctl("resource", "add", resource, "--driver", "ledger", *extra)
        assert added.returncode == 0, added.stderr
    owned = wait_for(lambda: all_owned(database, 2), 30, "one resource on each node")
    on_a = next(r for r, (owner, _) in owned.items() if owner == "node-a")
    on_b = next(r for r, (owner, _) in owned.items() if owner == "node-b")
    return on_a, on_b


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
        running = asyncio.gather(calls(a, "a"), calls(b, "b"))
        # While they are in flight, each node's listening connection is cut:
        # it listens again, and every call still gets its one answer.
        while not await asyncio.to_thread(operations, database):
            await asyncio.sleep(0.01)
        assert await asyncio.to_thread(terminate_listeners, database) == 2
        answered = await running
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

    for daemon, me in ((a, "node-a"), (b, "node-b")):  # every resource, its node
        listed = daemon.ctl("resources", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["id"]: row for row in json.loads(listed.stdout)}
        assert {r: row["node"] for r, row in rows.items()} == {r: o for r, (o, _) in owned.items()}
        for row in rows.values():
            here = row["node"] == me
            assert row["state"] == ("attached" if here else "remote"), row
            assert (row["version"] == "1.0.0") is here and row["queued"] == 0
        text = daemon.ctl("resources").stdout.splitlines()
        assert [line.split()[0] for line in text] == resources
        assert all(f"(node {owned[line.split()[0]][0]})" in line for line in text), text

    plain = b.ctl("call", "r0", "write", "value=plain", "--json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["result"]["times"] == 1, plain.stdout


def test_errors_are_answered_as_one_node_answers_them(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    a, b = two_nodes(daemon_factory, database, tmp_path)
    _, on_b = one_on_each(a, database)  # called through node-a: its owner is the other node

    async def failing(
        daemon: Daemon, resource: str, op: str, args: dict[str, Any], timeout: float = 10
    ) -> OperationError:
        async with AsyncClient(str(daemon.socket)) as client, asyncio.timeout(30):
            with pytest.raises(OperationError) as failed:
                await client.call(resource, op, args, timeout=timeout)
        return failed.value

    async def large() -> Any:  # too large for a notification: read from the database
        async with AsyncClient(str(a.socket)) as client, asyncio.timeout(30):
            return await client.call(on_b, "plain", {"value": "x" * 9000}, timeout=10)

    assert asyncio.run(large())["value"] == "x" * 9000
    unknown = asyncio.run(failing(a, on_b, "nope", {}))
    assert unknown.type == "OperationFailed", unknown  # as one node answers it
    assert unknown.message == (
        "UnknownOperation: driver has no operation 'nope' (operations: plain, properties, raw, "
        "slow, write, write_sync)"
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


def test_the_owner_settles_what_a_dead_owner_left_through_its_driver(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    """Operations found dispatched under an earlier epoch (as a node that died
    after sending them leaves them): ``write``, listed idempotent, runs again;
    ``plain`` is asked of the driver's ``reconcile_operation``; a change of
    properties is applied again and stored."""
    a, _ = two_nodes(daemon_factory, database, tmp_path)
    assert a.ctl("resource", "add", "r0", "--driver", "ledger").returncode == 0
    owned = wait_for(lambda: owners(database)["r0"][0] and owners(database), 30, "r0 owned")
    epoch = owned["r0"][1]
    with psycopg.connect(database, autocommit=True) as db:
        left = [
            db.execute(
                "INSERT INTO drivebay.operation (resource_id, operation, args, state,"
                " accepted_by, dispatched_epoch) VALUES ('r0', %s, %s, 'dispatched',"
                " 'node-gone', %s) RETURNING id",
                (operation, json.dumps(args), epoch - 1),
            ).fetchone()[0]  # type: ignore[index]
            for operation, args in (
                ("write", {"value": "v"}),
                ("plain", {"value": "v"}),
                ("@set", {"properties": {"label": "settled"}}),
            )
        ]

    def settled() -> list[tuple[Any, ...]] | None:
        found = [op for op in operations(database) if op[0] in left]
        return found if all(op[3] in ("done", "failed") for op in found) else None

    rerun, asked, change = wait_for(settled, 30, "all three settled by the owner")
    assert rerun[3] == "done" and rerun[5] == epoch
    assert rerun[6] == {"op_id": str(left[0]), "times": 1, "epoch": epoch}
    assert asked[3] == "failed" and asked[5] == epoch
    assert asked[6]["type"] == "LookupError" and "never reached" in asked[6]["message"]
    assert change[3] == "done" and change[5] == epoch  # a change applies again: stored now
    assert stored(database, "r0") == (None, {"label": "settled"})
    ran = a.ctl("call", "r0", "properties", "--json")
    assert json.loads(ran.stdout)["result"] == {"label": "settled"}, ran.stderr


def test_a_driver_stopped_on_a_node_hands_its_resources_to_another(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    a, _ = two_nodes(daemon_factory, database, tmp_path)
    on_a, _ = one_on_each(a, database)
    owned = owners(database)
    assert a.ctl("call", on_a, "write", "value=before").returncode == 0

    stopped = a.ctl("stop", "ledger")
    assert stopped.returncode == 0, stopped.stderr
    moved = wait_for(
        lambda: {o for o, _ in owners(database).values()} == {"node-b"} and owners(database),
        30,
        "node-b owns both",
    )
    assert moved[on_a][1] > owned[on_a][1]  # claimed again, under a greater epoch
    ran = a.ctl("call", on_a, "write", "value=after", "--json")  # accepted by node-a
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["result"]["epoch"] == moved[on_a][1]  # run by node-b
    rows = json.loads(a.ctl("resources", "--json").stdout)
    assert {(row["id"], row["state"], row["node"]) for row in rows} == {
        ("r0", "remote", "node-b"),
        ("r1", "remote", "node-b"),
    }


def stored(database: str, resource: str) -> tuple[Any, ...] | None:
    with psycopg.connect(database) as db:
        return db.execute(
            "SELECT pinned, properties FROM drivebay.resource WHERE id = %s", (resource,)
        ).fetchone()


def test_set_and_pin_reach_the_owners_actor_and_rm_answers_the_waiting_calls(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    a, b = two_nodes(daemon_factory, database, tmp_path)
    one_on_each(a, database, "label=one")

    def properties(daemon: Daemon, resource: str) -> Any:
        ran = daemon.ctl("call", resource, "properties", "--json")
        assert ran.returncode == 0, ran.stderr
        return json.loads(ran.stdout)["result"]

    for daemon, tag in ((a, "a"), (b, "b")):  # each changes both: its own and the other's
        for resource in ("r0", "r1"):
            label = f"{tag}-{resource}"
            changed = daemon.ctl("resource", "set", resource, f"label={label}")
            assert changed.returncode == 0, changed.stderr
            assert stored(database, resource) == (None, {"label": label})
            assert properties(a, resource) == {"label": label}  # the owner's instance has it

    refused = b.ctl("resource", "set", "r0", "label=refuse")
    assert refused.returncode == 1, refused.stderr
    (line,) = refused.stderr.splitlines()
    assert "ledger refused the new properties of r0" in line and "this label is refused" in line
    assert stored(database, "r0") == (None, {"label": "b-r0"})  # nothing changed
    assert properties(b, "r0") == {"label": "b-r0"}

    pinned = b.ctl("resource", "pin", "r0", "1.0.0")
    assert pinned.returncode == 0, pinned.stderr
    assert stored(database, "r0") == ("1.0.0", {"label": "b-r0"})
    rows = {row["id"]: row for row in json.loads(a.ctl("resources", "--json").stdout)}
    assert rows["r0"]["pinned"] == "1.0.0"
    assert a.ctl("resource", "pin", "r0", "--unpin").returncode == 0
    assert stored(database, "r0") == (None, {"label": "b-r0"})
    # A date, a float PostgreSQL prints as a long integer, the largest int64:
    # through the queue, the owner's instance gets them as one node gives them.
    for daemon, size in ((a, "1e20"), (b, "9223372036854775807")):
        changed = daemon.ctl(
            "resource", "set", "r0", "since=2025-12-31 10:00+01:00", f"size={size}"
        )
        assert changed.returncode == 0, changed.stderr
        wanted = {"label": "b-r0", "since": "2025-12-31T10:00:00+01:00", "size": json.loads(size)}
        assert properties(a, "r0") == properties(b, "r0") == wanted
        assert isinstance(properties(b, "r0")["size"], type(json.loads(size)))
    changes = [op[3] for op in operations(database) if op[2].startswith("@")]
    assert sorted(changes) == ["done"] * 8 + ["failed"]  # 6 sets, 2 pins; the refused set
    assert a.ctl("call", "r0", "@set").returncode == 1  # not a driver's operation

    def r1_states() -> list[str]:  # of the calls below
        return [op[3] for op in operations(database) if op[1] == "r1" and op[2] in CALLS]

    CALLS = ("slow", "write")

    async def until(check: Any) -> None:
        while not check():
            await asyncio.sleep(0.02)

    async def waiting_then_removed() -> list[BaseException]:
        async with AsyncClient(str(a.socket)) as client, asyncio.timeout(30):
            running = asyncio.ensure_future(client.call("r1", "slow", {"seconds": 3}, timeout=20))
            await until(lambda: r1_states() == ["dispatched"])  # in the driver now
            waiting = asyncio.ensure_future(client.call("r1", "write", {"value": "x"}, timeout=20))
            await until(lambda: r1_states() == ["dispatched", "queued"])  # behind it
            removed = await asyncio.to_thread(b.ctl, "resource", "rm", "r1")
            assert removed.returncode == 0, removed.stderr
            answers = await asyncio.gather(running, waiting, return_exceptions=True)
        return [answer for answer in answers if isinstance(answer, BaseException)]

    failed = asyncio.run(waiting_then_removed())
    assert len(failed) == 2, failed
    assert all("resource r1 was removed" in str(error) for error in failed), failed
    assert stored(database, "r1") is None
    for daemon in (a, b):
        assert [row["id"] for row in json.loads(daemon.ctl("resources", "--json").stdout)] == ["r0"]


def test_a_token_limited_to_other_drivers_cannot_reach_a_resource_another_node_owns(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    """Authorization on a node that does not own the resource knows its
    driver from the database: a token limited to ``other*`` is told the
    ledger resource does not exist (404), and nothing is queued."""
    port = free_port()
    tokens = [
        {"sha256": sha("elsewhere-token"), "role": "operator", "drivers": ["other*"]},
        {"sha256": sha("everywhere-token"), "role": "operator"},
    ]
    http = {"http": {"listen": f"127.0.0.1:{port}"}, "authorization": {"tokens": tokens}}
    a, _ = two_nodes(daemon_factory, database, tmp_path, http)
    _, on_b = one_on_each(a, database)
    owned = owners(database)
    target = f"/v1/resources/{on_b}/calls/write"

    status, answer = over_tcp(port, "POST", target, "elsewhere-token", {"value": "no"})
    assert status == 404, answer
    assert [op for op in operations(database) if op[1] == on_b] == []
    status, answer = over_tcp(port, "POST", target, "everywhere-token", {"value": "yes"})
    assert status == 200 and answer["epoch"] == owned[on_b][1], answer


def test_a_node_that_joins_takes_its_share_and_the_first_closes_those_actors(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    """node-a owns all four resources; node-b joins: node-a gives up two
    (their actors closed, their instances detached: its driver serves two),
    node-b attaches them, and calls on either node reach the new owners."""
    a = clustered(daemon_factory, database, "node-a")
    staging = tmp_path / "sa"
    staging.mkdir()
    a.drop(ledger_bundle(staging))
    a.start()
    a.wait_state("ledger", "RUNNING")
    resources = [f"r{i}" for i in range(4)]
    for resource in resources:
        assert a.ctl("resource", "add", resource, "--driver", "ledger").returncode == 0
    first = wait_for(
        lambda: (
            {o for o, _ in owners(database).values()} == {"node-a"}
            and len(owners(database)) == 4
            and owners(database)
        ),
        30,
        "node-a owns all four",
    )
    assert a.status()["ledger"]["resources"] == 4

    b = clustered(daemon_factory, database, "node-b")
    staging = tmp_path / "sb"
    staging.mkdir()
    b.drop(ledger_bundle(staging))
    b.start()
    split = wait_for(lambda: all_owned(database, 4), 30, "two on each node")
    moved = [r for r, (owner, _) in split.items() if owner == "node-b"]
    assert len(moved) == 2
    wait_for(lambda: a.status()["ledger"]["resources"] == 2, 30, "node-a's actors closed")
    for resource in resources:
        for daemon in (a, b):
            ran = daemon.ctl("call", resource, "write", "value=v", "--json")
            assert ran.returncode == 0, ran.stderr
            assert json.loads(ran.stdout)["result"]["epoch"] == split[resource][1]
        if resource in moved:
            assert split[resource][1] > first[resource][1]
