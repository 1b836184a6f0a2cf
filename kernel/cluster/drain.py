"""``drivebayctl drain-node``: mark a node draining (or live again) in the
cluster's database, and wait, bounded, until it holds no lease.

Any node may ask, over a connection of its own (each wait bounded by
``renew_s``). The drained node's own ``ClusterNode`` does the rest at its
next rounds (``ClusterRepository.surplus`` gives it everything it holds,
``ClusterNode._rebalance`` hands each resource over once its queue is idle),
and the other nodes claim what it released. docs/cluster.md, "Draining a
node".
"""

from __future__ import annotations

import asyncio
import time

import psycopg

from drivebay.kernel.cluster.connection import connect
from drivebay.kernel.cluster.repository import ClusterRepository, NodeInfo, no_such_node
from drivebay.kernel.cluster.settings import ClusterSettings, shown_database
from drivebay.protocol.errors import KernelError, RequestError


class DrainTimedOut(RequestError):
    """``--wait`` ended before the node had handed everything over; it goes on
    draining (``drivebayctl nodes`` shows it)."""


async def drain_node(
    settings: ClusterSettings,
    node_id: str,
    *,
    undo: bool = False,
    force: bool = False,
    wait: float | None = None,
) -> NodeInfo:
    """Mark ``node_id`` draining (``undo``: live again) and return it as the
    database lists it; with ``wait`` (seconds), once it holds no lease.
    Raises ``NoSuchName`` or ``RequestError`` (one line) as
    ``ClusterRepository.drain``, ``DrainTimedOut`` when ``wait`` ran out,
    and ``KernelError`` when the database cannot answer."""
    try:
        async with asyncio.timeout(settings.renew_s):
            db = await connect(settings)
        try:
            repository = ClusterRepository(db, settings.node_id, settings.lease_s)
            async with asyncio.timeout(settings.renew_s):
                if undo:
                    info = await repository.undrain(node_id)
                else:
                    info = await repository.drain(node_id, force=force)
            if wait is not None and not undo:
                info = await _drained(repository, info, wait, settings.renew_s)
            return info
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            raise no_such_node(node_id) from None  # no node has made the schema yet
        finally:
            await db.close()
    except (psycopg.Error, TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or "no answer in time"
        raise KernelError(
            f"the cluster database {shown_database(settings.database)} did not answer "
            f"({reason}); check that PostgreSQL runs and admits this node"
        ) from exc


async def _drained(
    repository: ClusterRepository, info: NodeInfo, wait: float, renew_s: float
) -> NodeInfo:
    """``info`` again once it holds no lease, asked every quarter of
    ``renew_s`` (the drained node gives up resources once per round)."""
    end = time.monotonic() + wait
    while info.resources:
        left = end - time.monotonic()
        if left <= 0:
            raise DrainTimedOut(
                f"node {info.node_id} still holds {info.resources} resources after {wait:g} s "
                "(each is handed over once its queue is idle); it goes on draining: "
                "'drivebayctl nodes' shows it"
            )
        await asyncio.sleep(min(left, renew_s / 4))
        async with asyncio.timeout(renew_s):
            info = next(n for n in await repository.nodes() if n.node_id == info.node_id)
    return info
