"""The rows of ``drivebayctl resources`` on a node of a cluster.

Every resource as the database last listed it (``queue_statements.Listed``):
a resource this node owns shows its actor's state and version, one another
node owns shows ``remote``, one nobody owns ``unowned``; each with its
``node`` and ``queued`` (its operations not finished, from the database).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from drivebay.kernel.cluster.queue_statements import Listed
from drivebay.kernel.resources.actor import ResourceActor

Row = dict[str, Any]


def row_of(
    entry: Listed, actor: ResourceActor | None, node_id: str, actor_row: Callable[[Any], Row]
) -> Row:
    """``entry``'s row; ``actor_row`` makes the row of an actor owned here."""
    if actor is not None and entry.node == node_id:
        row = actor_row(actor)
        row.update(queued=entry.open, node=entry.node)
        return row
    resource = entry.resource
    return {
        "id": resource.id,
        "driver": resource.driver,
        "version": None,
        "pinned": resource.pinned,
        "properties": resource.properties,
        "state": "remote" if entry.node else "unowned",
        "queued": entry.open,
        "last_event": None,
        "node": entry.node,
    }


def page_of(
    listed: list[Listed], limit: int | None, after: str | None, row: Callable[[Listed], Row]
) -> tuple[list[Row], str | None, int]:
    """At most ``limit`` rows after ``after``, the next page's ``after`` and the total."""
    ids = [entry.resource.id for entry in listed]
    start = 0 if after is None else bisect.bisect_right(ids, after)
    end = len(ids) if limit is None else min(len(ids), start + limit)
    return (
        [row(entry) for entry in listed[start:end]],
        ids[end - 1] if end < len(ids) else None,
        len(ids),
    )
