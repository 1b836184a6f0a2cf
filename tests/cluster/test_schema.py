"""The cluster's schema in a real PostgreSQL: migrated once, again without
effect, and a newer or foreign one refused and left as it is."""

from __future__ import annotations

import asyncio

import pytest

from drivebay.kernel.cluster.connection import Connection
from drivebay.kernel.cluster.schema import (
    SCHEMA_VERSION,
    SchemaRefused,
    migrate,
    schema_version,
)
from tests.cluster.helpers import connected
from tests.helpers import run


async def tables(db: Connection) -> list[str]:
    cursor = await db.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'drivebay' ORDER BY table_name"
    )
    return [name for (name,) in await cursor.fetchall()]


def test_a_fresh_database_is_migrated_to_the_current_version(database: str) -> None:
    async def main() -> None:
        async with connected(database) as db:
            assert await schema_version(db) == 0
            assert await migrate(db) == 0
            assert await schema_version(db) == SCHEMA_VERSION
            assert await tables(db) == [
                "node",
                "operation",
                "ownership",
                "resource",
                "schema_version",
            ]

    run(main())


def test_migrating_again_changes_nothing(database: str) -> None:
    async def main() -> None:
        async with connected(database) as db:
            await migrate(db)
            await db.execute(
                "INSERT INTO drivebay.resource (id, driver) VALUES ('r1', 'disk');"
                "INSERT INTO drivebay.ownership (resource_id) VALUES ('r1')"
            )
            assert await migrate(db) == SCHEMA_VERSION
            cursor = await db.execute("SELECT id FROM drivebay.resource")
            assert await cursor.fetchall() == [("r1",)]
            assert await schema_version(db) == SCHEMA_VERSION

    run(main())


def test_nodes_migrating_at_once_migrate_once(database: str) -> None:
    async def main() -> None:
        async with connected(database) as a, connected(database) as b, connected(database) as c:
            found = await asyncio.gather(migrate(a), migrate(b), migrate(c))
            assert sorted(found) == [0, SCHEMA_VERSION, SCHEMA_VERSION]
            assert await schema_version(a) == SCHEMA_VERSION

    run(main())


def test_a_newer_schema_is_refused_and_left_as_it_is(database: str) -> None:
    async def main() -> None:
        async with connected(database) as db:
            await migrate(db)
            newer = SCHEMA_VERSION + 1
            await db.execute("UPDATE drivebay.schema_version SET version = %s", (newer,))
            await db.execute("CREATE TABLE drivebay.from_the_future (x int)")
            with pytest.raises(SchemaRefused) as caught:
                await migrate(db)
            assert str(caught.value) == (
                f"the cluster database's schema version {newer} is newer than this drivebayd "
                f"understands ({SCHEMA_VERSION}); upgrade drivebayd on this node"
            )
            assert await schema_version(db) == newer
            assert "from_the_future" in await tables(db)

    run(main())


def test_a_drivebay_schema_not_made_by_drivebay_is_refused(database: str) -> None:
    async def main() -> None:
        async with connected(database) as db:
            await db.execute("CREATE SCHEMA drivebay; CREATE TABLE drivebay.mine (x int)")
            with pytest.raises(SchemaRefused, match=r"use another database in cluster\.database"):
                await migrate(db)
            assert await tables(db) == ["mine"]

    run(main())
