"""The cluster's SQL: what one node reads and writes in the shared database.

``ClusterRepository`` wraps one autocommit connection (``connection.py``)
for one node. Time is the database's only (``now()``): leases are compared
and extended there, never with a node's clock. The rules that need no
database (how many to claim, the fence) are in ``lease.py``.

What keeps two nodes from acting on one resource:

- a claim takes free or expired ownership rows with ``FOR UPDATE SKIP
  LOCKED`` and gives each a new epoch from one sequence, so epochs only grow;
- a guarded write (dispatch mark, result) is one statement that locks the
  ownership row ``FOR KEY SHARE`` only if this node holds it under the given
  epoch: a claim cannot take the row while the write runs, and a write after
  a claim finds another epoch and changes nothing (it returns False);
- renewals extend only leases that have not ended; a lease that ended is
  claimed again, under a new epoch, by whichever node gets it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any, Final

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from drivebay.kernel.cluster.connection import (
    CLAIM_CHANNEL,
    RESULT_PAYLOAD,
    RESULT_PREFIX,
    Connection,
    channel,
)
from drivebay.kernel.cluster.lease import Runs, claim_quota, stranded, surplus
from drivebay.kernel.resources.store import Resource, check_resource_id
from drivebay.protocol.errors import NoSuchName, RequestError

# pg_advisory_xact_lock(QUEUE_LOCK, hashtext(resource)): enqueues of one
# resource take their ids in the order they commit.
QUEUE_LOCK: Final = 0x64726976


class Lease(msgspec.Struct, frozen=True):
    """A resource this node owns under ``epoch`` until ``lease_until``."""

    resource_id: str
    epoch: int
    lease_until: datetime.datetime


class NodeInfo(msgspec.Struct, frozen=True):
    """A node as ``drivebayctl nodes`` shows it. ``state`` is ``live``,
    ``draining`` or ``left`` as the database holds it, or ``silent`` when a
    node that has not left has a heartbeat older than a lease (it died, or
    cannot reach the database); ``draining`` is true while the node is
    asked to drain, also when it is silent."""

    node_id: str
    state: str
    last_heartbeat: datetime.datetime
    resources: int  # leases not ended
    lease_until: datetime.datetime | None  # its latest lease
    draining: bool = False


class QueuedOperation(msgspec.Struct, frozen=True):
    """An operation of the queue not finished yet (``queued`` or ``dispatched``)."""

    id: int
    resource_id: str
    operation: str
    args: dict[str, Any]
    state: str
    dispatched_epoch: int | None


class ClusterRepository:
    """One node's view of the shared tables; ``register`` before anything else."""

    def __init__(self, db: Connection, node_id: str, lease_s: float) -> None:
        self._db = db
        self.node_id = node_id
        self._lease = datetime.timedelta(seconds=lease_s)
        self.incarnation: int | None = None
        self._drivers: list[str] = []
        self._versions: list[str] = []

    @property
    def db(self) -> Connection:
        """The connection it uses (for the statements of ``queue_statements``)."""
        return self._db

    # -- nodes -------------------------------------------------------------------

    async def register(self, drivers: Iterable[str], versions: Iterable[str] = ()) -> int:
        """Join as a live node running ``drivers`` (names) and ``versions``
        (NAME@VERSION, for pinned resources); returns this process's
        incarnation. Leases an earlier process of the same node id still held
        end now: they are claimed again, under new epochs."""
        self._drivers, self._versions = sorted(set(drivers)), sorted(set(versions))
        async with self._db.transaction():
            row = await self._one(
                "INSERT INTO drivebay.node (node_id, incarnation, heartbeat, state, drivers,"
                " versions) VALUES (%(me)s, nextval('drivebay.epoch'), now(), 'live',"
                " %(drivers)s, %(versions)s)"
                " ON CONFLICT (node_id) DO UPDATE SET incarnation = EXCLUDED.incarnation,"
                " heartbeat = now(), state = 'live', drivers = EXCLUDED.drivers,"
                " versions = EXCLUDED.versions"
                " RETURNING incarnation",
                {"me": self.node_id, "drivers": self._drivers, "versions": self._versions},
            )
            await self._db.execute(
                "UPDATE drivebay.ownership SET lease_until = now()"
                " WHERE owner_node = %s AND lease_until > now()",
                (self.node_id,),
            )
        self.incarnation = int(row[0])
        return self.incarnation

    def resume(self, incarnation: int, drivers: Iterable[str], versions: Iterable[str]) -> None:
        """Go on as this process's registration of ``incarnation`` (made over
        an earlier connection): nothing is written."""
        self.incarnation = incarnation
        self._drivers, self._versions = sorted(set(drivers)), sorted(set(versions))

    async def set_drivers(self, drivers: Iterable[str], versions: Iterable[str]) -> bool:
        """Say that this process now runs ``drivers`` and ``versions`` (its
        claims follow them from the next one); False when another process
        holds the node id now (nothing written)."""
        self._drivers, self._versions = sorted(set(drivers)), sorted(set(versions))
        cursor = await self._db.execute(
            "UPDATE drivebay.node SET drivers = %(drivers)s, versions = %(versions)s"
            " WHERE node_id = %(me)s AND incarnation = %(incarnation)s",
            {
                "me": self.node_id,
                "incarnation": self.incarnation,
                "drivers": self._drivers,
                "versions": self._versions,
            },
        )
        return cursor.rowcount == 1

    async def leave(self) -> None:
        """Leave the cluster: state ``left``, every lease ends now."""
        async with self._db.transaction():
            await self._db.execute(
                "UPDATE drivebay.node SET state = 'left' WHERE node_id = %s AND incarnation = %s",
                (self.node_id, self.incarnation),
            )
            await self._db.execute(
                "UPDATE drivebay.ownership SET lease_until = now()"
                " WHERE owner_node = %s AND lease_until > now()",
                (self.node_id,),
            )

    async def nodes(self) -> list[NodeInfo]:
        """Every node that ever registered, by id."""
        cursor = await self._db.execute(
            "SELECT n.node_id,"
            " CASE WHEN n.state <> 'left' AND n.heartbeat <= now() - %s THEN 'silent'"
            " ELSE n.state END,"
            " n.heartbeat,"
            " count(w.resource_id) FILTER (WHERE w.lease_until > now()),"
            " max(w.lease_until) FILTER (WHERE w.lease_until > now()),"
            " n.state = 'draining'"
            " FROM drivebay.node n LEFT JOIN drivebay.ownership w ON w.owner_node = n.node_id"
            " GROUP BY n.node_id ORDER BY n.node_id",
            (self._lease,),
        )
        return [NodeInfo(*row) for row in await cursor.fetchall()]

    async def drain(self, node_id: str, *, force: bool = False) -> NodeInfo:
        """Mark ``node_id`` draining (any node may ask): it claims nothing
        more, the others no longer count it in their spread, and it gives up
        what it holds at its next rounds (``surplus``). Raises ``NoSuchName``
        when no such node registered, ``RequestError`` when it has left or
        (unless ``force``) when no other live node runs the driver (or pinned
        version) of some resource it could run or holds: those would stay
        without an owner. A node draining already stays so."""
        async with self._db.transaction():
            state = await self._locked_state(node_id)
            if state == "left":
                raise RequestError(
                    f"node {node_id} has left the cluster and holds nothing; nothing to drain"
                )
            if not force:
                left = stranded(*await self._takers(node_id))
                if left:
                    which = ", ".join(f"{d} ({n} resources)" for d, n in sorted(left.items()))
                    raise RequestError(
                        f"no other live node runs {which} that node {node_id} runs; start one "
                        "that does, or drain with --force to leave them without an owner"
                    )
            await self._db.execute(
                "UPDATE drivebay.node SET state = 'draining' WHERE node_id = %s", (node_id,)
            )
        return await self._node(node_id)

    async def undrain(self, node_id: str) -> NodeInfo:
        """Make a draining ``node_id`` live again: it claims its share at its
        next round. Raises ``NoSuchName`` or ``RequestError`` (it has left)
        as ``drain``; a live node stays live."""
        async with self._db.transaction():
            if await self._locked_state(node_id) == "left":
                raise RequestError(
                    f"node {node_id} has left the cluster; it is live again when its "
                    "drivebayd starts"
                )
            await self._db.execute(
                "UPDATE drivebay.node SET state = 'live' WHERE node_id = %s AND state = 'draining'",
                (node_id,),
            )
        return await self._node(node_id)

    async def _locked_state(self, node_id: str) -> str:
        cursor = await self._db.execute(
            "SELECT state FROM drivebay.node WHERE node_id = %s FOR UPDATE", (node_id,)
        )
        row = await cursor.fetchone()
        if row is None:
            raise no_such_node(node_id)
        return str(row[0])

    async def _takers(self, node_id: str) -> tuple[list[tuple[str, str | None, int]], list[Runs]]:
        """The resources ``node_id`` could run or holds, as (driver, pin,
        count), and what each other live node runs."""
        cursor = await self._db.execute(
            "SELECT r.driver, r.pinned, count(*) FROM drivebay.resource r"
            " JOIN drivebay.ownership w ON w.resource_id = r.id"
            " JOIN drivebay.node x ON x.node_id = %s"
            " WHERE (w.owner_node = x.node_id AND w.lease_until > now())"
            " OR (r.driver = ANY (x.drivers)"
            "  AND (r.pinned IS NULL OR r.driver || '@' || r.pinned = ANY (x.versions)))"
            " GROUP BY r.driver, r.pinned",
            (node_id,),
        )
        groups = [(str(d), p, int(n)) for d, p, n in await cursor.fetchall()]
        cursor = await self._db.execute(
            "SELECT drivers, versions FROM drivebay.node WHERE node_id <> %s"
            " AND state = 'live' AND heartbeat > now() - %s",
            (node_id, self._lease),
        )
        others = [Runs(frozenset(d), frozenset(v)) for d, v in await cursor.fetchall()]
        return groups, others

    async def _node(self, node_id: str) -> NodeInfo:
        return next(info for info in await self.nodes() if info.node_id == node_id)

    # -- leases ------------------------------------------------------------------

    async def claim(self) -> list[Lease]:
        """Claim free or expired resources of the drivers this node runs, up
        to its fair share of each among the live nodes that run it (rows
        another node is claiming at the same moment are skipped, never
        waited for). Returns what it claimed, each under a new epoch."""
        claimed: list[Lease] = []
        for driver, resources, nodes, mine, claimable in await self._claim_counts():
            wanted = claim_quota(resources, nodes, mine, claimable)
            if wanted:
                claimed += await self._claim(driver, wanted)
        return claimed

    async def _claim_counts(self) -> list[tuple[str, int, int, int, int]]:
        cursor = await self._db.execute(
            "SELECT r.driver, count(*),"
            " (SELECT count(*) FROM drivebay.node n WHERE n.state = 'live'"
            "  AND (n.heartbeat > now() - %(lease)s OR n.node_id = %(me)s)"
            "  AND r.driver = ANY (n.drivers)),"
            " count(*) FILTER (WHERE w.owner_node = %(me)s AND w.lease_until > now()),"
            " count(*) FILTER (WHERE w.owner_node IS NULL OR w.lease_until IS NULL"
            "  OR w.lease_until <= now())"
            " FROM drivebay.resource r JOIN drivebay.ownership w ON w.resource_id = r.id"
            " WHERE r.driver = ANY (%(drivers)s) GROUP BY r.driver ORDER BY r.driver",
            {"lease": self._lease, "me": self.node_id, "drivers": self._drivers},
        )
        return [
            (str(d), int(r), int(n), int(m), int(c)) for d, r, n, m, c in await cursor.fetchall()
        ]

    async def _claim(self, driver: str, wanted: int) -> list[Lease]:
        cursor = await self._db.execute(
            "WITH me AS (SELECT FROM drivebay.node WHERE node_id = %(me)s"
            "  AND incarnation = %(incarnation)s AND state = 'live'),"
            " candidates AS (SELECT w.resource_id FROM drivebay.ownership w"
            "  JOIN drivebay.resource r ON r.id = w.resource_id"
            "  WHERE r.driver = %(driver)s AND EXISTS (SELECT FROM me)"
            "  AND (r.pinned IS NULL OR r.driver || '@' || r.pinned = ANY (%(versions)s))"
            "  AND (w.owner_node IS NULL OR w.lease_until IS NULL OR w.lease_until <= now())"
            "  ORDER BY w.resource_id LIMIT %(wanted)s FOR UPDATE OF w SKIP LOCKED)"
            " UPDATE drivebay.ownership w SET owner_node = %(me)s,"
            "  epoch = nextval('drivebay.epoch'), lease_until = now() + %(lease)s"
            " FROM candidates c WHERE w.resource_id = c.resource_id"
            " RETURNING w.resource_id, w.epoch, w.lease_until",
            {
                "me": self.node_id,
                "incarnation": self.incarnation,
                "driver": driver,
                "versions": self._versions,
                "wanted": wanted,
                "lease": self._lease,
            },
        )
        return sorted((Lease(*row) for row in await cursor.fetchall()), key=lambda x: x.resource_id)

    async def surplus(self) -> dict[str, int]:
        """Resource id -> epoch of what this node holds over its fair share of
        each driver (the last ids of each), for it to ``release``; all it
        holds when it is draining (``drain``)."""
        return (await self.handover())[1]

    async def handover(self) -> tuple[bool, dict[str, int]]:
        """Whether this node is draining, and ``surplus``: everything it
        holds when draining (the first statement says both), else what it
        holds over its fair share."""
        cursor = await self._db.execute(
            "SELECT w.resource_id, w.epoch FROM drivebay.node n"
            " LEFT JOIN drivebay.ownership w"
            "  ON w.owner_node = n.node_id AND w.lease_until > now()"
            " WHERE n.node_id = %s AND n.incarnation = %s AND n.state = 'draining'"
            " ORDER BY w.resource_id",
            (self.node_id, self.incarnation),
        )
        rows = await cursor.fetchall()
        if rows:  # draining (holding nothing: one row of nulls)
            return True, {str(r): int(epoch) for r, epoch in rows if r is not None}
        over = {
            driver: n
            for driver, resources, nodes, mine, _ in await self._claim_counts()
            if (n := surplus(resources, nodes, mine))
        }
        if not over:
            return False, {}
        cursor = await self._db.execute(
            "SELECT w.resource_id, w.epoch, r.driver FROM drivebay.ownership w"
            " JOIN drivebay.resource r ON r.id = w.resource_id"
            " WHERE w.owner_node = %s AND w.lease_until > now() AND r.driver = ANY (%s)"
            " ORDER BY w.resource_id DESC",
            (self.node_id, list(over)),
        )
        chosen: dict[str, int] = {}
        for resource_id, epoch, driver in await cursor.fetchall():
            if over[driver] > 0:
                over[driver] -= 1
                chosen[str(resource_id)] = int(epoch)
        return False, chosen

    async def release(self, leases: dict[str, int]) -> set[str]:
        """End now the leases (resource id -> epoch) this node holds under
        those epochs and whose resources have no operation dispatched, so that
        other nodes claim them; returns the ids released. The caller must have
        stopped dispatching for them first."""
        cursor = await self._db.execute(
            "UPDATE drivebay.ownership w SET lease_until = now()"
            " FROM unnest(%(ids)s::text[], %(epochs)s::bigint[]) AS g(id, epoch)"
            " WHERE w.resource_id = g.id AND w.epoch = g.epoch AND w.owner_node = %(me)s"
            " AND w.lease_until > now() AND NOT EXISTS (SELECT FROM drivebay.operation o"
            "  WHERE o.resource_id = w.resource_id AND o.state = 'dispatched')"
            " RETURNING w.resource_id",
            {"ids": list(leases), "epochs": list(leases.values()), "me": self.node_id},
        )
        return {str(resource_id) for (resource_id,) in await cursor.fetchall()}

    async def renew(self) -> dict[str, int] | None:
        """Beat the heartbeat and extend every lease of this node that has
        not ended, in one statement. Returns resource id -> epoch of the
        leases renewed, or None when this process no longer holds the node
        id (another process registered it, or it left): fence then."""
        cursor = await self._db.execute(
            "WITH beat AS (UPDATE drivebay.node SET heartbeat = now()"
            "  WHERE node_id = %(me)s AND incarnation = %(incarnation)s AND state <> 'left'"
            "  RETURNING node_id),"
            " renewed AS (UPDATE drivebay.ownership SET lease_until = now() + %(lease)s"
            "  WHERE owner_node = %(me)s AND lease_until > now() AND EXISTS (SELECT FROM beat)"
            "  RETURNING resource_id, epoch)"
            " SELECT r.resource_id, r.epoch FROM beat LEFT JOIN renewed r ON true",
            {"me": self.node_id, "incarnation": self.incarnation, "lease": self._lease},
        )
        rows = await cursor.fetchall()
        if not rows:
            return None
        return {str(resource): int(epoch) for resource, epoch in rows if resource is not None}

    # -- resources ---------------------------------------------------------------

    async def add_resource(self, resource: Resource) -> None:
        """Store a new resource, owned by nobody yet, and tell every node to
        claim now (``CLAIM_CHANNEL``, when it commits). Raises
        ``RequestError`` when its id is malformed or taken."""
        check_resource_id(resource.id)
        try:
            await self._db.execute(
                "WITH added AS (INSERT INTO drivebay.resource (id, driver, pinned, properties)"
                "  VALUES (%s, %s, %s, %s) RETURNING id),"
                " owned AS (INSERT INTO drivebay.ownership (resource_id) SELECT id FROM added"
                "  RETURNING resource_id)"
                " SELECT pg_notify(%s, resource_id) FROM owned",
                (
                    resource.id,
                    resource.driver,
                    resource.pinned,
                    Jsonb(resource.properties),
                    CLAIM_CHANNEL,
                ),
            )
        except psycopg.errors.UniqueViolation:
            raise RequestError(
                f"resource {resource.id} already exists; use 'resource set' to change it"
            ) from None

    async def update_resource(self, resource: Resource) -> None:
        """Replace the stored resource with the same id (driver, pin,
        properties). Raises ``NoSuchName`` when there is none."""
        cursor = await self._db.execute(
            "UPDATE drivebay.resource SET driver = %s, pinned = %s, properties = %s,"
            " updated = now() WHERE id = %s",
            (resource.driver, resource.pinned, Jsonb(resource.properties), resource.id),
        )
        if cursor.rowcount == 0:
            raise _no_such(resource.id)

    async def remove_resource(self, resource_id: str) -> None:
        """Delete the resource, its ownership and its operations. Raises
        ``NoSuchName`` when there is none."""
        cursor = await self._db.execute(
            "DELETE FROM drivebay.resource WHERE id = %s", (resource_id,)
        )
        if cursor.rowcount == 0:
            raise _no_such(resource_id)

    async def resources(self) -> list[Resource]:
        """Every resource, by id."""
        cursor = await self._db.execute(
            "SELECT id, driver, pinned, properties FROM drivebay.resource ORDER BY id"
        )
        return [Resource(*row) for row in await cursor.fetchall()]

    # -- the operation queue -----------------------------------------------------

    async def enqueue(self, resource_id: str, operation: str, args: dict[str, Any]) -> int:
        """Write a call to the queue and notify its owner (if any) in the
        same statement; returns its id once committed, which is when the
        call may be acknowledged. Raises ``NoSuchName`` when the resource
        does not exist."""
        try:
            row = await self._one(
                "WITH queued AS (INSERT INTO drivebay.operation"
                "  (resource_id, operation, args, accepted_by)"
                "  SELECT %(resource)s, %(operation)s, %(args)s, %(me)s"
                "  FROM (SELECT pg_advisory_xact_lock(%(lock)s, hashtext(%(resource)s))) AS l"
                "  RETURNING id, resource_id)"
                " SELECT q.id, (SELECT pg_notify(%(prefix)s || w.owner_node,"
                "  q.id::text || ' ' || q.resource_id) FROM drivebay.ownership w"
                "  WHERE w.resource_id = q.resource_id AND w.owner_node IS NOT NULL)"
                " FROM queued q",
                {
                    "resource": resource_id,
                    "operation": operation,
                    "args": Jsonb(args),
                    "me": self.node_id,
                    "lock": QUEUE_LOCK,
                    "prefix": channel(""),
                },
            )
        except psycopg.errors.ForeignKeyViolation:
            raise _no_such(resource_id) from None
        return int(row[0])

    async def open_operations(self, resource_id: str) -> list[QueuedOperation]:
        """The operations of ``resource_id`` not finished, in their order."""
        cursor = await self._db.execute(
            "SELECT id, resource_id, operation, args, state, dispatched_epoch"
            " FROM drivebay.operation WHERE resource_id = %s"
            " AND state IN ('queued', 'dispatched') ORDER BY id",
            (resource_id,),
        )
        return [QueuedOperation(*row) for row in await cursor.fetchall()]

    async def with_open_operations(self, resource_ids: Iterable[str]) -> list[str]:
        """Which of ``resource_ids`` have unfinished operations (one query):
        what an owner polls for, in case a notification was lost."""
        cursor = await self._db.execute(
            "SELECT DISTINCT resource_id FROM drivebay.operation"
            " WHERE resource_id = ANY (%s) AND state IN ('queued', 'dispatched')"
            " ORDER BY resource_id",
            (list(resource_ids),),
        )
        return [str(resource) for (resource,) in await cursor.fetchall()]

    async def mark_dispatched(self, op_id: int, resource_id: str, epoch: int) -> bool:
        """Mark operation ``op_id`` dispatched under ``epoch``, only if this
        node holds ``resource_id`` under that epoch with a lease not ended,
        the operation is queued and none before it is unfinished. False:
        nothing changed, and the call must not be sent."""
        cursor = await self._db.execute(
            "WITH owner AS (SELECT resource_id FROM drivebay.ownership"
            "  WHERE resource_id = %(resource)s AND owner_node = %(me)s AND epoch = %(epoch)s"
            "  AND lease_until > now() FOR KEY SHARE)"
            " UPDATE drivebay.operation o SET state = 'dispatched',"
            "  dispatched_epoch = %(epoch)s, dispatched_at = now()"
            " FROM owner WHERE o.id = %(op)s AND o.resource_id = owner.resource_id"
            "  AND o.state = 'queued' AND NOT EXISTS (SELECT FROM drivebay.operation p"
            "  WHERE p.resource_id = o.resource_id AND p.id < o.id"
            "  AND p.state IN ('queued', 'dispatched'))"
            " RETURNING o.id",
            {"resource": resource_id, "me": self.node_id, "epoch": epoch, "op": op_id},
        )
        return await cursor.fetchone() is not None

    async def redispatch(self, op_id: int, resource_id: str, epoch: int) -> bool:
        """Take over operation ``op_id``, dispatched under an earlier epoch
        whose result was never written, to settle it under ``epoch``: the same
        guard as ``mark_dispatched`` (this node's epoch, a lease not ended).
        False: nothing changed."""
        cursor = await self._db.execute(
            "WITH owner AS (SELECT resource_id FROM drivebay.ownership"
            "  WHERE resource_id = %(resource)s AND owner_node = %(me)s AND epoch = %(epoch)s"
            "  AND lease_until > now() FOR KEY SHARE)"
            " UPDATE drivebay.operation o SET dispatched_epoch = %(epoch)s, dispatched_at = now()"
            " FROM owner WHERE o.id = %(op)s AND o.resource_id = owner.resource_id"
            "  AND o.state = 'dispatched' AND o.dispatched_epoch < %(epoch)s"
            " RETURNING o.id",
            {"resource": resource_id, "me": self.node_id, "epoch": epoch, "op": op_id},
        )
        return await cursor.fetchone() is not None

    async def write_result(
        self, op_id: int, resource_id: str, epoch: int, *, ok: bool, result: Any
    ) -> bool:
        """Record the result of operation ``op_id``, dispatched under
        ``epoch``, only if this node still holds ``resource_id`` under that
        epoch (a lease that ended but was not claimed by another still
        counts: no one else has acted). False: nothing changed. The node
        that accepted the call is notified (``result_channel``) when it commits."""
        cursor = await self._db.execute(
            "WITH owner AS (SELECT resource_id FROM drivebay.ownership"
            "  WHERE resource_id = %(resource)s AND owner_node = %(me)s AND epoch = %(epoch)s"
            "  FOR KEY SHARE)"
            " UPDATE drivebay.operation o SET state = %(state)s, result = %(result)s,"
            "  finished_at = now()"
            " FROM owner WHERE o.id = %(op)s AND o.resource_id = owner.resource_id"
            "  AND o.state = 'dispatched' AND o.dispatched_epoch = %(epoch)s"
            " RETURNING o.id, pg_notify(%(done)s || o.accepted_by, "
            + RESULT_PAYLOAD.format(op="o")
            + ")",
            {
                "resource": resource_id,
                "me": self.node_id,
                "epoch": epoch,
                "op": op_id,
                "state": "done" if ok else "failed",
                "result": Jsonb(result),
                "done": RESULT_PREFIX,
            },
        )
        return await cursor.fetchone() is not None

    async def _one(self, query: str, params: dict[str, Any]) -> tuple[Any, ...]:
        cursor = await self._db.execute(query, params)
        row = await cursor.fetchone()
        assert row is not None, "the statement returns one row"
        return row


def no_such_node(node_id: str) -> NoSuchName:
    return NoSuchName(f"no node {node_id} in the cluster; 'drivebayctl nodes' lists them")


def _no_such(resource_id: str) -> NoSuchName:
    return NoSuchName(f"no resource {resource_id}; 'drivebayctl resources' lists them")
