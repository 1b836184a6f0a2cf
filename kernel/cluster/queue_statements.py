"""The cluster's SQL for calls through the queue, beside ``repository.py``.

What a node needs to take a call from a client and to answer it (the
enqueue itself is ``enqueuing.py``: the errors of a call refused, here),
read its result, put back an operation that was marked dispatched but never
sent (guarded like a result write), read one resource's definition for
the actor its owner makes, list every resource with its owner, and write
the result of a change of a resource (``SET``, ``PIN``) with its new
definition. Each is one autocommit statement over a connection of
``connection.py``.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from psycopg.types.json import Jsonb

from drivebay.kernel.cluster.connection import RESULT_PAYLOAD, RESULT_PREFIX, Connection
from drivebay.kernel.resources.store import Resource
from drivebay.protocol.errors import NoSuchName, NotRunning


class Finished(msgspec.Struct, frozen=True):
    """An operation's state and, once ``done`` or ``failed``, its result."""

    state: str
    result: Any


def unknown_resource(resource_id: str) -> NoSuchName:
    """A call for a resource the cluster does not have (nothing queued)."""
    return NoSuchName(f"no such resource: {resource_id} (drivebayctl resources lists them)")


def not_runnable(resource_id: str, driver: str, pinned: str | None) -> NotRunning:
    """A call for a resource whose driver (pinned version) no live node runs."""
    wanted = f"{driver}@{pinned}" if pinned else str(driver)
    return NotRunning(
        f"no live node of the cluster runs {wanted}, which {resource_id} needs; "
        "the call was not queued: install or start that driver on a node"
    )


async def finished(db: Connection, op_id: int) -> Finished | None:
    """Operation ``op_id``'s state and result; None when it is gone (its
    resource was removed)."""
    cursor = await db.execute(
        "SELECT state, result FROM drivebay.operation WHERE id = %s", (op_id,)
    )
    row = await cursor.fetchone()
    return None if row is None else Finished(str(row[0]), row[1])


async def requeue(db: Connection, node_id: str, op_id: int, resource_id: str, epoch: int) -> bool:
    """Put operation ``op_id``, marked dispatched under ``epoch`` but never
    sent (the fence closed first), back to queued, under the guard of a
    result write: only while ``node_id`` holds ``resource_id`` under that
    epoch. The next owner then runs it rather than settle it. False:
    nothing changed (another node claimed it: it settles the operation)."""
    cursor = await db.execute(
        "WITH owner AS (SELECT resource_id FROM drivebay.ownership"
        "  WHERE resource_id = %(resource)s AND owner_node = %(me)s AND epoch = %(epoch)s"
        "  FOR KEY SHARE)"
        " UPDATE drivebay.operation o SET state = 'queued', dispatched_epoch = NULL,"
        "  dispatched_at = NULL"
        " FROM owner WHERE o.id = %(op)s AND o.resource_id = owner.resource_id"
        "  AND o.state = 'dispatched' AND o.dispatched_epoch = %(epoch)s"
        " RETURNING o.id",
        {"resource": resource_id, "me": node_id, "epoch": epoch, "op": op_id},
    )
    return await cursor.fetchone() is not None


async def definition(db: Connection, resource_id: str) -> Resource | None:
    """The stored definition of ``resource_id``; None when there is none."""
    cursor = await db.execute(
        "SELECT id, driver, pinned, properties FROM drivebay.resource WHERE id = %s",
        (resource_id,),
    )
    row = await cursor.fetchone()
    return None if row is None else Resource(*row)


class Listed(msgspec.Struct, frozen=True):
    """A resource as ``drivebayctl resources`` lists it from the database."""

    resource: Resource
    node: str | None  # the owner whose lease has not ended
    open: int  # operations not finished


async def listing(db: Connection) -> list[Listed]:
    """Every resource, by id, with its owner and its unfinished operations."""
    cursor = await db.execute(
        "SELECT r.id, r.driver, r.pinned, r.properties,"
        " CASE WHEN w.lease_until > now() THEN w.owner_node END,"
        " (SELECT count(*) FROM drivebay.operation o WHERE o.resource_id = r.id"
        "  AND o.state IN ('queued', 'dispatched'))"
        " FROM drivebay.resource r JOIN drivebay.ownership w ON w.resource_id = r.id"
        " ORDER BY r.id"
    )
    return [
        Listed(Resource(*row[:4]), None if row[4] is None else str(row[4]), int(row[5]))
        for row in await cursor.fetchall()
    ]


# Changes of a resource's definition go through its queue as operations of
# these names (no driver operation can have one: they are not identifiers),
# applied by the owner's actor between two operations.
SET: Final = "@set"  # args {"properties": {...}}: re-attach with these
PIN: Final = "@pin"  # args {"version": VERSION or None}: move to that version
CHANGES: Final = frozenset({SET, PIN})


async def write_change(
    db: Connection, node_id: str, op_id: int, resource_id: str, epoch: int, change: Any
) -> bool:
    """``write_result`` of a change that took (``SET`` or ``PIN``): its result
    and the resource's new definition (``change``: the operation's args) in
    one statement, so one transaction, under the same guard. False: nothing
    changed (another node owns the resource now)."""
    cursor = await db.execute(
        "WITH owner AS (SELECT resource_id FROM drivebay.ownership"
        "  WHERE resource_id = %(resource)s AND owner_node = %(me)s AND epoch = %(epoch)s"
        "  FOR KEY SHARE),"
        " done AS (UPDATE drivebay.operation o SET state = 'done', result = %(result)s,"
        "  finished_at = now()"
        "  FROM owner WHERE o.id = %(op)s AND o.resource_id = owner.resource_id"
        "  AND o.state = 'dispatched' AND o.dispatched_epoch = %(epoch)s"
        "  RETURNING o.id, o.accepted_by, o.state, o.result),"
        " changed AS (UPDATE drivebay.resource SET"
        "  properties = CASE WHEN %(set)s THEN %(properties)s ELSE properties END,"
        "  pinned = CASE WHEN %(set)s THEN pinned ELSE %(version)s END, updated = now()"
        "  WHERE id = %(resource)s AND EXISTS (SELECT FROM done) RETURNING id)"
        " SELECT d.id, pg_notify(%(done_prefix)s || d.accepted_by, "
        + RESULT_PAYLOAD.format(op="d")
        + "),"
        " (SELECT count(*) FROM changed) FROM done d",
        {
            "resource": resource_id,
            "me": node_id,
            "epoch": epoch,
            "op": op_id,
            "result": Jsonb(change),
            "set": "properties" in change,
            "properties": Jsonb(change.get("properties", {})),
            "version": change.get("version"),
            "done_prefix": RESULT_PREFIX,
        },
    )
    return await cursor.fetchone() is not None
