"""Nodes of a cluster for tests: each a repository over its own connection
to the test's database (tests/cluster/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from drivebay.kernel.cluster.connection import Connection, connect
from drivebay.kernel.cluster.dispatch import Outcome
from drivebay.kernel.cluster.lease import Fence
from drivebay.kernel.cluster.repository import ClusterRepository, QueuedOperation
from drivebay.kernel.cluster.schema import migrate
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.kernel.resources.store import Resource


def settings(url: str, node_id: str = "n1", lease_s: float = 15.0) -> ClusterSettings:
    return ClusterSettings(url, node_id, lease_s, renew_s=lease_s / 5, grace_s=lease_s / 5)


@asynccontextmanager
async def connected(url: str, node_id: str = "admin") -> AsyncIterator[Connection]:
    db = await connect(settings(url, node_id))
    async with db:
        yield db


@asynccontextmanager
async def cluster(
    url: str,
    *node_ids: str,
    drivers: tuple[str, ...] = ("disk",),
    lease_s: float = 15.0,
    register: bool = True,
) -> AsyncIterator[list[ClusterRepository]]:
    """Nodes ``node_ids`` of a migrated database, registered as running ``drivers``."""
    async with AsyncExitStack() as stack:
        nodes = []
        for node_id in node_ids:
            db = await stack.enter_async_context(connected(url, node_id))
            await migrate(db)
            node = ClusterRepository(db, node_id, lease_s)
            if register:
                await node.register(drivers)
            nodes.append(node)
        yield nodes


async def add(node: ClusterRepository, count: int, driver: str = "disk", prefix: str = "r") -> None:
    for i in range(count):
        await node.add_resource(Resource(f"{prefix}{i:03d}", driver))


async def expire_leases(db: Connection) -> None:
    """Every lease ends now, as if its node had stopped renewing."""
    await db.execute("UPDATE drivebay.ownership SET lease_until = now() - interval '1 ms'")


async def eventually(check: Callable[[], Awaitable[Any]], deadline: float = 10.0) -> Any:
    """Await ``check()`` until it returns something true; fail past the deadline."""
    end = time.monotonic() + deadline
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > end:
            raise AssertionError(f"not reached within {deadline}s")
        await asyncio.sleep(0.02)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def open_fence(clock: Clock | None = None) -> Fence:
    fence = Fence(lease_s=15, grace_s=5, clock=clock or Clock())
    fence.renewed(fence.sending())
    return fence


class Driver:
    """Stands for the driver process: a ledger of what reached it."""

    def __init__(self) -> None:
        self.ledger: list[tuple[str, int, int]] = []  # (how, operation id, epoch)

    async def send(self, op: QueuedOperation, epoch: int) -> Outcome:
        self.ledger.append(("send", op.id, epoch))
        return Outcome(ok=True, result={"did": op.operation})

    async def reconcile(self, op: QueuedOperation, epoch: int) -> Outcome:
        self.ledger.append(("reconcile", op.id, epoch))
        return Outcome(ok=True, result={"found": op.operation})


async def states(node: ClusterRepository) -> list[tuple[Any, ...]]:
    cursor = await node._db.execute(
        "SELECT id, state, dispatched_epoch, result FROM drivebay.operation ORDER BY id"
    )
    return await cursor.fetchall()
