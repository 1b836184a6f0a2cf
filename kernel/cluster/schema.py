"""The cluster's tables in PostgreSQL, versioned and grown by migrations.

Everything lives in the schema ``drivebay`` of the configured database, so
the database may hold other things. ``drivebay.schema_version`` holds the
version; ``MIGRATIONS[n]`` takes version ``n`` to ``n + 1``. ``migrate``
applies what is missing in one transaction under an advisory lock (nodes
starting at once migrate one after another; the others find it done). A
schema newer than this code, or a ``drivebay`` schema without a version, is
refused with ``SchemaRefused`` before anything is written: never overwritten.

The tables (docs/cluster.md):

- ``node``: one row per node id: its last heartbeat, its state, the process
  (``incarnation``) that holds the id now, and the drivers it runs.
- ``resource``: the resources, their properties and pins (as in SQLite).
- ``ownership``: one row per resource: ``owner_node`` (NULL: free),
  ``epoch`` (from the sequence ``drivebay.epoch``: every claim takes a new,
  greater one) and ``lease_until``, in the database's time only.
- ``operation``: the queue of calls, in the order of ``id`` per resource,
  with the epoch under which each was dispatched and its result.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import AsyncConnection

from drivebay.protocol.errors import KernelError


class SchemaRefused(KernelError):
    """The cluster database holds a schema this drivebayd must not touch (newer,
    or not made by drivebay): no retry helps; upgrade drivebayd or use another
    database."""


# pg_advisory_xact_lock's key for migrating ("drivebay" in ASCII, as a bigint).
MIGRATION_LOCK: Final = 0x6472697665626179

_V1: Final = """
CREATE SCHEMA drivebay;
CREATE TABLE drivebay.schema_version (
    version integer NOT NULL,
    one_row boolean PRIMARY KEY DEFAULT true CHECK (one_row)
);
INSERT INTO drivebay.schema_version (version) VALUES (0);
CREATE SEQUENCE drivebay.epoch AS bigint;
CREATE TABLE drivebay.node (
    node_id text PRIMARY KEY,
    incarnation bigint NOT NULL,
    heartbeat timestamptz NOT NULL,
    state text NOT NULL CHECK (state IN ('live', 'draining', 'left')),
    drivers text[] NOT NULL DEFAULT '{}',   -- driver names it runs
    versions text[] NOT NULL DEFAULT '{}'   -- NAME@VERSION it runs (for pinned resources)
);
CREATE TABLE drivebay.resource (
    id text PRIMARY KEY,
    driver text NOT NULL,
    pinned text NULL,
    properties jsonb NOT NULL DEFAULT '{}',
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX resource_by_driver ON drivebay.resource (driver);
CREATE TABLE drivebay.ownership (
    resource_id text PRIMARY KEY REFERENCES drivebay.resource (id) ON DELETE CASCADE,
    owner_node text NULL REFERENCES drivebay.node (node_id) ON DELETE SET NULL,
    epoch bigint NOT NULL DEFAULT 0,
    lease_until timestamptz NULL
);
CREATE INDEX ownership_by_owner ON drivebay.ownership (owner_node, lease_until);
CREATE TABLE drivebay.operation (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource_id text NOT NULL REFERENCES drivebay.resource (id) ON DELETE CASCADE,
    operation text NOT NULL,
    args jsonb NOT NULL,
    state text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'dispatched', 'done', 'failed')),
    accepted_by text NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now(),
    dispatched_epoch bigint NULL,
    dispatched_at timestamptz NULL,
    result jsonb NULL,
    finished_at timestamptz NULL
);
CREATE INDEX operation_open ON drivebay.operation (resource_id, id)
    WHERE state IN ('queued', 'dispatched');
"""

MIGRATIONS: Final[tuple[str, ...]] = (_V1,)
SCHEMA_VERSION: Final = len(MIGRATIONS)


async def schema_version(db: AsyncConnection[Any]) -> int:
    """The version of the ``drivebay`` schema (0: none yet). Raises
    ``SchemaRefused`` when a ``drivebay`` schema exists without a version."""
    cursor = await db.execute(
        "SELECT to_regclass('drivebay.schema_version') IS NOT NULL,"
        " EXISTS (SELECT FROM pg_namespace WHERE nspname = 'drivebay')"
    )
    row = await cursor.fetchone()
    assert row is not None
    has_version, has_schema = row
    if not has_version:
        if has_schema:
            raise SchemaRefused(
                "the cluster database has a schema 'drivebay' that drivebay did not make "
                "(no drivebay.schema_version); use another database in cluster.database"
            )
        return 0
    cursor = await db.execute("SELECT version FROM drivebay.schema_version")
    found = await cursor.fetchone()
    return 0 if found is None else int(found[0])


async def migrate(db: AsyncConnection[Any]) -> int:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction; returns the
    version found before. Raises ``SchemaRefused`` (nothing written) when the
    database holds a newer schema or one not made by drivebay."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = await schema_version(db)
        if found > SCHEMA_VERSION:
            raise SchemaRefused(
                f"the cluster database's schema version {found} is newer than this drivebayd "
                f"understands ({SCHEMA_VERSION}); upgrade drivebayd on this node"
            )
        for step in MIGRATIONS[found:]:
            await db.execute(step)  # our own constant SQL, several statements, no parameters
        if found < SCHEMA_VERSION:
            await db.execute("UPDATE drivebay.schema_version SET version = %s", (SCHEMA_VERSION,))
    return found
