"""Group commit of the calls one node accepts: many enqueues, one statement.

``Enqueuer.enqueue`` queues one call and returns its id once it is
committed, which is when the call may be acknowledged. Calls that arrive
while a statement is on its way wait for it and go together in the next
one (at most ``BATCH`` at a time): one statement, so one transaction and
one commit, for any resources. The statement does for each call what
``queue_statements.enqueue_call`` does for one: it checks the resource
exists and that a live node runs its driver (its pinned version when
pinned), takes the advisory lock of each resource (in one order, so two
nodes' batches never wait on each other in a cycle) before any id is
handed out, so that one resource's operations take their ids in the order
they commit, inserts the calls (in the order they arrived) and notifies
each owner. Each call is answered on its own: its id, ``NoSuchName`` or
``NotRunning`` (nothing queued for it); a statement that fails fails every
call it held, none of which was queued.

The statements run one at a time, in a task the ``Enqueuer`` owns (made
when a call finds none running, ended when nothing waits); ``close``
cancels it.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from psycopg.types.json import Jsonb

from drivebay.kernel.cluster.connection import Connection, channel, stored_json
from drivebay.kernel.cluster.queue_statements import not_runnable, unknown_resource
from drivebay.kernel.cluster.repository import QUEUE_LOCK
from drivebay.protocol.errors import RequestError

BATCH: Final = 256  # calls in one statement at most

Run = Callable[[Callable[[Connection], Awaitable[Any]], str], Awaitable[Any]]  # Link.run

_ENQUEUE_MANY: Final = (
    "WITH input AS MATERIALIZED (SELECT (e->>'r') AS resource_id, (e->>'o') AS operation,"
    "  e->'a' AS args, n FROM jsonb_array_elements(%(calls)s) WITH ORDINALITY AS t(e, n)),"
    " r AS MATERIALIZED (SELECT i.n, i.resource_id, i.operation, i.args, x.id, x.driver,"
    "  x.pinned, x.id IS NOT NULL AND EXISTS (SELECT FROM drivebay.node nd"
    "  WHERE nd.state = 'live' AND (nd.heartbeat > now() - %(lease)s OR nd.node_id = %(me)s)"
    "  AND CASE WHEN x.pinned IS NULL THEN x.driver = ANY (nd.drivers)"
    "  ELSE x.driver || '@' || x.pinned = ANY (nd.versions) END) AS runnable"
    "  FROM input i LEFT JOIN drivebay.resource x ON x.id = i.resource_id),"
    " locks AS MATERIALIZED (SELECT pg_advisory_xact_lock(%(lock)s, s.h) FROM"
    "  (SELECT DISTINCT hashtext(resource_id) AS h FROM r WHERE runnable ORDER BY 1) AS s),"
    " numbered AS MATERIALIZED (SELECT s.n, nextval(pg_get_serial_sequence("
    "  'drivebay.operation', 'id')) AS id FROM (SELECT n FROM r"
    "  WHERE runnable AND (SELECT count(*) FROM locks) >= 0 ORDER BY n) AS s),"
    " queued AS (INSERT INTO drivebay.operation (id, resource_id, operation, args, accepted_by)"
    "  OVERRIDING SYSTEM VALUE SELECT q.id, r.resource_id, r.operation, r.args, %(me)s"
    "  FROM numbered q JOIN r USING (n) ORDER BY q.id)"
    " SELECT r.n, r.id IS NOT NULL, r.driver, r.pinned, q.id,"
    "  (SELECT pg_notify(%(prefix)s || w.owner_node, q.id::text || ' ' || r.id)"
    "  FROM drivebay.ownership w WHERE q.id IS NOT NULL AND w.resource_id = r.id"
    "  AND w.owner_node IS NOT NULL AND (w.owner_node <> %(me)s OR NOT %(wakes_itself)s))"
    " FROM r LEFT JOIN numbered q USING (n) ORDER BY r.n"
)


class _Call(msgspec.Struct):
    resource_id: str
    operation: str
    args: msgspec.Raw  # as JSON
    answer: asyncio.Future[int]


class Enqueuer:
    """The calls accepted by ``node_id``, queued in groups over ``run`` (``Link.run``)."""

    def __init__(
        self, run: Run, node_id: str, lease: datetime.timedelta, *, wakes_itself: bool
    ) -> None:
        self._run = run
        self._node_id = node_id
        self._lease = lease
        self.wakes_itself = wakes_itself
        self._waiting: list[_Call] = []
        self._writer: asyncio.Task[None] | None = None

    async def enqueue(self, resource_id: str, operation: str, args: dict[str, Any]) -> int:
        """Queue one call; its id once committed. Raises ``NoSuchName`` (no
        such resource), ``NotRunning`` (no live node runs its driver),
        ``RequestError`` (arguments JSON cannot hold) or ``KernelError`` (the
        database failed); nothing is queued then."""
        try:
            stored = stored_json(args)
        except TypeError as exc:
            raise RequestError(
                f"the arguments of {operation} on {resource_id} cannot be stored in the "
                f"cluster's queue ({exc}); pass JSON-like values (text, numbers, lists, maps)"
            ) from None
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Call(resource_id, operation, stored, answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write(), name="cluster enqueues"
            )
        return await answer

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        for call in self._waiting:
            call.answer.cancel()
        self._waiting.clear()

    async def _write(self) -> None:
        while self._waiting:
            calls, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
            calls = [call for call in calls if not call.answer.done()]  # gone: not queued
            if not calls:
                continue
            try:
                rows = await self._run(
                    functools.partial(self._statement, calls=calls), "did not queue the call"
                )
                for call, (_, found, driver, pinned, op_id, _) in zip(calls, rows, strict=True):
                    if call.answer.done():
                        continue
                    if not found:
                        call.answer.set_exception(unknown_resource(call.resource_id))
                    elif op_id is None:
                        call.answer.set_exception(not_runnable(call.resource_id, driver, pinned))
                    else:
                        call.answer.set_result(int(op_id))
            except Exception as exc:  # the statement failed (none queued): each call is told
                for call in calls:
                    if not call.answer.done():
                        call.answer.set_exception(exc)
            except BaseException:  # cancelled (close): they are told so
                for call in calls:
                    call.answer.cancel()
                raise

    async def _statement(self, db: Connection, *, calls: list[_Call]) -> list[tuple[Any, ...]]:
        cursor = await db.execute(
            _ENQUEUE_MANY,
            {
                "calls": Jsonb(
                    [{"r": c.resource_id, "o": c.operation, "a": c.args} for c in calls]
                ),
                "me": self._node_id,
                "lease": self._lease,
                "lock": QUEUE_LOCK,
                "prefix": channel(""),
                "wakes_itself": self.wakes_itself,
            },
        )
        return await cursor.fetchall()
