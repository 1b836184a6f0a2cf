"""The owner's statements that walk a resource's queue, one round trip a step.

``take`` marks the first unfinished operation of a resource dispatched when
it is queued, and returns it (one found dispatched is returned as it is, to
be settled): the listing of the open operations and the dispatch mark in
one statement. ``finish`` writes an operation's result and, in the same
statement, takes the next one (``take=False``: the result alone). Both are
guarded as ``ClusterRepository.mark_dispatched`` and ``write_result`` are:
they first lock the resource's ownership row ``FOR KEY SHARE`` only if this
node holds it under the given epoch; a dispatch mark also needs the lease
not ended, and the operation it marks is the first unfinished one of the
resource by id (the order of the queue), so one runs at a time, in order.
The result notification goes to the node that accepted the call, unless
that is this node and it answers its callers in memory (``notify_me``
False). The caller checks the fence immediately before each send, as
before.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from psycopg.types.json import Jsonb

from drivebay.kernel.cluster.connection import RESULT_PAYLOAD, RESULT_PREFIX, Connection
from drivebay.kernel.cluster.repository import QueuedOperation


class Taken(msgspec.Struct, frozen=True):
    """What ``take`` found: ``held`` (this node holds the resource under the
    epoch, lease not ended), the first unfinished operation (None: none, or
    not ``held``) and whether it was queued and is now marked dispatched
    under the epoch (False: it was dispatched already, to be settled)."""

    held: bool
    op: QueuedOperation | None
    marked: bool


_OWNER: Final = (
    "owner AS (SELECT resource_id, lease_until > now() AS leased FROM drivebay.ownership"
    " WHERE resource_id = %(resource)s AND owner_node = %(me)s AND epoch = %(epoch)s"
    " FOR KEY SHARE)"
)


def _head(condition: str) -> str:
    """The first unfinished operation (when ``condition`` holds and the lease
    has not ended), and its mark if it is queued."""
    return (
        " head AS MATERIALIZED (SELECT o.id, o.resource_id, o.operation, o.args, o.state,"
        "  o.dispatched_epoch FROM drivebay.operation o"
        "  WHERE o.resource_id = %(resource)s AND o.state IN ('queued', 'dispatched')"
        "  AND (SELECT leased FROM owner) AND " + condition + " ORDER BY o.id LIMIT 1),"
        " marked AS (UPDATE drivebay.operation o SET state = 'dispatched',"
        "  dispatched_epoch = %(epoch)s, dispatched_at = now()"
        "  FROM head h WHERE o.id = h.id AND h.state = 'queued' AND o.state = 'queued'"
        "  RETURNING o.id)"
    )


_TAKEN: Final = (
    "coalesce((SELECT leased FROM owner), false), h.id, h.resource_id, h.operation, h.args,"
    " h.state, h.dispatched_epoch, m.id IS NOT NULL"
)

_TAKE: Final = (
    "WITH "
    + _OWNER
    + ","
    + _head("true")
    + " SELECT "
    + _TAKEN
    + " FROM (SELECT) AS one LEFT JOIN head h ON true LEFT JOIN marked m ON true"
)

_FINISH: Final = (
    "WITH " + _OWNER + ","
    " done AS (UPDATE drivebay.operation o SET state = %(state)s, result = %(result)s,"
    "  finished_at = now()"
    "  FROM owner WHERE o.id = %(op)s AND o.resource_id = owner.resource_id"
    "  AND o.state = 'dispatched' AND o.dispatched_epoch = %(epoch)s"
    "  RETURNING o.id, o.accepted_by, o.state, o.result),"
    + _head("%(take)s AND o.id <> %(op)s AND EXISTS (SELECT FROM done)")
    + " SELECT CASE WHEN %(notify_me)s OR d.accepted_by <> %(me)s"
    "  THEN pg_notify(%(done_prefix)s || d.accepted_by, "
    + RESULT_PAYLOAD.format(op="d")
    + ") END, "
    + _TAKEN
    + " FROM done d LEFT JOIN head h ON true LEFT JOIN marked m ON true"
)


def _taken(row: tuple[Any, ...]) -> Taken:
    held, op_id, resource_id, operation, args, state, epoch, marked = row
    if op_id is None:
        return Taken(bool(held), None, False)
    op = QueuedOperation(
        op_id, resource_id, operation, args, "dispatched" if marked else state, epoch
    )
    return Taken(bool(held), op, bool(marked))


async def take(db: Connection, node_id: str, resource_id: str, epoch: int) -> Taken:
    """The first unfinished operation of ``resource_id``, marked dispatched
    under ``epoch`` when it was queued; only while ``node_id`` holds the
    resource under that epoch with a lease not ended (else ``held`` False,
    nothing changed, nothing may be sent)."""
    cursor = await db.execute(_TAKE, {"resource": resource_id, "me": node_id, "epoch": epoch})
    row = await cursor.fetchone()
    assert row is not None, "the statement returns one row"
    return _taken(row)


async def peek(db: Connection, resource_id: str) -> QueuedOperation | None:
    """The first unfinished operation of ``resource_id``, changing nothing
    (only for a test's hold before the dispatch mark: ``dispatch.FaultPoint``)."""
    cursor = await db.execute(
        "SELECT id, resource_id, operation, args, state, dispatched_epoch"
        " FROM drivebay.operation WHERE resource_id = %s"
        " AND state IN ('queued', 'dispatched') ORDER BY id LIMIT 1",
        (resource_id,),
    )
    row = await cursor.fetchone()
    return None if row is None else QueuedOperation(*row)


async def finish(
    db: Connection,
    node_id: str,
    op_id: int,
    resource_id: str,
    epoch: int,
    *,
    ok: bool,
    result: Any,
    take: bool,
    notify_me: bool,
) -> Taken | None:
    """Record the result of ``op_id`` under the guard of ``write_result``
    and, when ``take``, take the next operation under the guard of ``take``,
    in one statement. None: nothing changed (another node owns the
    resource). Without ``take`` the ``Taken`` has no operation."""
    cursor = await db.execute(
        _FINISH,
        {
            "resource": resource_id,
            "me": node_id,
            "epoch": epoch,
            "op": op_id,
            "state": "done" if ok else "failed",
            "result": Jsonb(result),
            "take": take,
            "notify_me": notify_me,
            "done_prefix": RESULT_PREFIX,
        },
    )
    row = await cursor.fetchone()
    return None if row is None else _taken(row[1:])
