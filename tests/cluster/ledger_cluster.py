"""What the multi-daemon tests prove things with: a driver that writes a
ledger line for every call it runs, into one file all nodes' drivers share
(the device, as it remembers what was done to it), and a history of every
change of ownership the database made (a trigger the test installs).

The driver ``cled``: ``record(value, op_id)`` appends ``{op_id, resource,
epoch, node, wall}`` (``wall``: the host's clock, which is PostgreSQL's
too); ``reconcile_operation`` answers from the shared file (the device
knows whether an operation reached it), or raises ``LookupError``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from tests.sandbox.bundles import make_bundle

if TYPE_CHECKING:
    from tests.cluster.daemons import Tables

SOURCE = """
import json
import re
import os
import time

LEDGER = os.environ["LEDGER_PATH"]
NODE = os.environ["NODE_ID"]


def _lines():
    try:
        with open(LEDGER) as ledger:
            return [json.loads(line) for line in ledger if line.endswith("\\n")]
    except FileNotFoundError:
        return []


class Ledger:
    def __init__(self, resource_id, properties, call_epoch):
        self.resource_id = resource_id
        self.call_epoch = call_epoch

    async def record(self, value, op_id):
        line = {"op_id": int(op_id), "resource": self.resource_id,
                "epoch": self.call_epoch(), "node": NODE, "value": value,
                "wall": time.time()}
        fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (json.dumps(line) + "\\n").encode())
        finally:
            os.close(fd)
        return line

    async def reconcile_operation(self, op_id, operation, args):
        for line in _lines():
            if line["op_id"] == int(op_id):
                return {**line, "reconciled": True}
        raise LookupError(f"{operation} {op_id} never reached the device")
"""

AUDIT = """
CREATE TABLE public.ownership_audit (
    n bigserial PRIMARY KEY, resource_id text, owner_node text, epoch bigint,
    lease_until timestamptz, tx_now timestamptz);
CREATE FUNCTION public.audit_ownership() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.ownership_audit (resource_id, owner_node, epoch, lease_until, tx_now)
    VALUES (NEW.resource_id, NEW.owner_node, NEW.epoch, NEW.lease_until, now());
    RETURN NEW;
END $$;
CREATE TRIGGER test_audit AFTER INSERT OR UPDATE ON drivebay.ownership
    FOR EACH ROW EXECUTE FUNCTION public.audit_ownership();
"""


def ledger_bundle(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    return make_bundle(
        root, name="cled", manifest_extra={"entrypoint": "cled:Ledger"}, src={"cled.py": SOURCE}
    )


def new_ledger(path: Path) -> Path:
    """An empty ledger every node's driver may append to."""
    path.write_text("")
    path.chmod(0o666)
    return path


def driver_config(ledger: Path, node_id: str) -> dict[str, Any]:
    """The daemon config that gives ``cled`` its ledger and node name."""
    return {"drivers": {"cled": {"env": {"LEDGER_PATH": str(ledger), "NODE_ID": node_id}}}}


def read_ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def install_audit(database: str) -> None:
    """Keep every change of ``drivebay.ownership`` (after a node made the schema)."""
    with psycopg.connect(database, autocommit=True) as db:
        db.execute(AUDIT)


def history(database: str) -> list[tuple[Any, ...]]:
    """(resource, owner, epoch, lease_until, the transaction's now()), in the order made."""
    with psycopg.connect(database) as db:
        return db.execute(
            "SELECT resource_id, owner_node, epoch, lease_until, tx_now"
            " FROM public.ownership_audit ORDER BY n"
        ).fetchall()


def check_history(rows: list[tuple[Any, ...]]) -> dict[str, list[tuple[int, str]]]:
    """Epochs per resource only increase, and each owner's lease begins no
    sooner than the previous one ended, in the database's time (a lease ends
    at its last lease_until: renewals extend it, a release or leave ends it).
    Returns resource -> [(epoch, owner)] in order."""
    spans: dict[str, dict[int, list[Any]]] = defaultdict(dict)  # resource -> epoch -> span
    order: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for resource, owner, epoch, until, now in rows:
        if owner is None or until is None:
            continue
        known = order[resource]
        if not known or known[-1][0] != epoch:
            assert not known or epoch > known[-1][0], (resource, known[-1], epoch)
            known.append((epoch, owner))
            spans[resource][epoch] = [now, until, owner]
        else:
            spans[resource][epoch][1] = until  # renewed, released or left: the last counts
    for resource, epochs in order.items():
        for (before, _), (after, _) in itertools.pairwise(epochs):
            ended, began = spans[resource][before][1], spans[resource][after][0]
            assert began >= ended, (resource, before, spans[resource][before], after, began)
    return dict(order)


def check_ledger(
    lines: list[dict[str, Any]], operations: dict[int, tuple[str, int | None, Any]]
) -> None:
    """Every operation reached the device at most once, in order per resource;
    one answered done reached it, one failed (its dead owner's call never
    reached the device: ``reconcile_operation`` raised) did not."""
    counts = Counter(line["op_id"] for line in lines)
    twice = [op for op, n in counts.items() if n > 1]
    assert not twice, f"operations run twice: {twice}"
    per_resource: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        per_resource[line["resource"]].append(line["op_id"])
    for resource, ids in per_resource.items():
        assert ids == sorted(ids), f"{resource} out of order: {ids}"
    for op_id, (state, _epoch, result) in operations.items():
        if state == "done":
            assert counts[op_id] == 1, (op_id, state, result)
        elif state == "failed":
            assert counts[op_id] == 0, (op_id, state, result)  # never reached the device
        else:
            raise AssertionError(f"operation {op_id} left {state}: {result}")


def check_stale_sends(lines: list[dict[str, Any]], rows: list[tuple[Any, ...]]) -> None:
    """No call reached the device under an epoch after the database gave the
    resource a newer one (host clock and database clock are the same here)."""
    claimed: dict[tuple[str, int], Any] = {}
    for resource, owner, epoch, _until, now in rows:
        if owner is not None:
            claimed.setdefault((resource, epoch), now)
    for line in lines:
        newer = [
            at.timestamp()
            for (resource, epoch), at in claimed.items()
            if resource == line["resource"] and epoch > line["epoch"]
        ]
        assert not newer or line["wall"] < min(newer), f"sent under a stale epoch: {line}"


NEVER_REACHED = re.compile(r"OperationFailed: LookupError: record (\d+) never reached the device$")


def check_answers(errors: list[str], operations: dict[int, tuple[str, int | None, Any]]) -> int:
    """The only calls answered with an error are those a dead or cut-off
    owner marked dispatched and never sent, which the heir's
    ``reconcile_operation`` found the device never saw (failed in the
    database too). Returns how many."""
    for error in errors:
        found = NEVER_REACHED.search(error)
        assert found, f"a call answered with an error: {error}"
        assert operations[int(found[1])][0] == "failed", (error, operations[int(found[1])])
    return len(errors)


def spread(tables: Tables, wanted: dict[str, int]) -> bool:
    """Does each node own as many resources as ``wanted`` says (and no other node any)?"""
    owners = [owner for owner, _ in tables.owners().values()]
    return {n: owners.count(n) for n in set(owners)} == wanted


def ledger_lines(ledger: Path, node: str) -> int:
    """How many calls the drivers of ``node`` ran, by the shared ledger."""
    return sum(1 for line in read_ledger(ledger) if line["node"] == node)


def ran_on(
    ledger: Path, node: str, resources: list[str], owners: dict[str, tuple[str | None, int]]
) -> bool:
    """Has ``node`` run a call of each of ``resources`` under the epoch ``owners`` gives it?"""
    ran = {
        line["resource"]
        for line in read_ledger(ledger)
        if line["node"] == node and line["epoch"] == owners[line["resource"]][1]
    }
    return set(resources) <= ran
