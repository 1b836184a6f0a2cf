"""Group commit of enqueues in a real PostgreSQL: calls that arrive together
go in one statement, each is answered on its own (its id, or why it was
refused, nothing queued then), and one resource's calls keep the order they
arrived in."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import Any

from drivebay.kernel.cluster.connection import Connection
from drivebay.kernel.cluster.enqueuing import Enqueuer
from drivebay.kernel.cluster.link import Link
from drivebay.protocol.errors import NoSuchName, NotRunning
from tests.cluster.helpers import add, cluster, settings
from tests.helpers import run


def test_calls_accepted_together_are_queued_in_one_statement(database: str) -> None:
    async def main() -> None:
        async with cluster(database, "front") as (front,):
            await add(front, 5)
            await add(front, 1, driver="tape", prefix="x")  # no node runs it
            link = Link(settings(database, "front"))
            statements = 0

            async def counted(act: Callable[[Connection], Awaitable[Any]], failed: str) -> Any:
                nonlocal statements
                statements += 1
                return await link.run(act, failed)

            enqueuer = Enqueuer(
                counted, "front", datetime.timedelta(seconds=15), wakes_itself=False
            )
            try:
                calls = [(f"r{i % 5:03d}", f"op{i}", {"i": i}) for i in range(40)]
                calls += [("ghost", "a", {}), ("x000", "a", {})]
                answers = await asyncio.gather(
                    *(enqueuer.enqueue(*call) for call in calls), return_exceptions=True
                )
            finally:
                await enqueuer.close()
                await link.close()
            assert statements < len(calls)
            assert isinstance(answers[-2], NoSuchName)
            assert isinstance(answers[-1], NotRunning)
            ids = answers[:-2]
            assert all(isinstance(op_id, int) for op_id in ids)
            cursor = await front.db.execute(
                "SELECT id, resource_id, operation, args FROM drivebay.operation ORDER BY id"
            )
            stored = {row[0]: row[1:] for row in await cursor.fetchall()}
            assert len(stored) == 40  # the refused ones were not queued
            for op_id, (resource, operation, args) in zip(ids, calls, strict=False):
                assert stored[op_id] == (resource, operation, args)
            for resource in {c[0] for c in calls[:40]}:  # arrival order is id order
                mine = [op_id for op_id, c in zip(ids, calls, strict=False) if c[0] == resource]
                assert mine == sorted(mine)

    run(main())
