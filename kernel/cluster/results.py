"""Answering a call this node accepted: waiting for its result in the queue.

``Results.wait`` waits for operation ``op_id`` to be finished, bounded by
the call's timeout, and returns its result or raises the error a single
node would have raised (same type name, same message). Three things wake
it, the first that comes: this node's own worker wrote the result
(``settle``, no database round trip), the owner's result write notified
this node's result channel with the result (``listener.Listener`` hears it
and calls ``heard``; a result too large for a notification is read), or,
for a notification lost, a look at the operation every ``poll_s``.
A result can come before its waiter: the enqueue's answer and the owner's
result notification arrive on two connections, in either order, so a
result nobody waits for yet is kept (``EARLY_KEEP_S``) for the waiter
that registers next (without this, such a call waited a whole ``poll_s``).
A call whose resource was removed meanwhile is answered "removed". One
that has no result in time is answered ``CallTimeout`` naming its
operation id: it stays queued and runs once; so is one still waiting when
``drivebayd`` stops (``stop``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import psycopg

from drivebay.kernel.cluster.dispatch import Outcome
from drivebay.kernel.cluster.queue_statements import Finished
from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.kernel.resources.actor import DriverAbsent, DriverFatal
from drivebay.protocol import errors
from drivebay.protocol.errors import DrivebayError, KernelError, OperationFailed, RequestError

log = logging.getLogger("drivebay.cluster")

# The kernel's own errors a result can carry, by the name clients see; any
# other name is the driver's (an ``OperationFailed`` of that type).
_KERNEL_ERRORS: dict[str, type[DrivebayError]] = {
    cls.__name__: cls
    for cls in (
        errors.Busy,
        errors.CallTimeout,
        errors.DriverCrashed,
        errors.DriverHung,
        errors.HandoverFailed,
        errors.NoSuchName,
        errors.NotRunning,
        errors.OutcomeUnknown,
        errors.ProtocolError,
        errors.RequestError,
        DriverAbsent,
        DriverFatal,
    )
}

Look = Callable[[int], Awaitable[Finished | None]]  # the operation as the database has it

# How long a result that came before its waiter is kept. Its waiter registers
# as soon as its enqueue answers (a loop pass or a few later); a result kept
# longer belongs to a waiter that gave up (CallTimeout), and is dropped.
EARLY_KEEP_S = 60.0


def error_of(result: Any) -> DrivebayError:
    """The error a failed operation's result (``{"type", "message"}``) stands for."""
    found = result if isinstance(result, dict) else {}
    name = str(found.get("type", "OperationFailed"))
    message = str(found.get("message", ""))
    cls = _KERNEL_ERRORS.get(name)
    return cls(message) if cls is not None else OperationFailed(name, message)


class Results:
    """The calls this node accepted and waits on, by operation id."""

    def __init__(self, settings: ClusterSettings, *, poll_s: float | None = None) -> None:
        self.settings = settings
        self._poll_s = settings.renew_s if poll_s is None else poll_s
        self._stopped = False  # drivebayd stops: the callers still waiting are answered
        # op id -> woken with the outcome (written here) or None (look it up)
        self._waiting: dict[int, asyncio.Future[Outcome | None]] = {}
        # op id -> (when it came, its outcome or None: look it up), oldest first:
        # results that came before their waiter registered
        self._early: collections.OrderedDict[int, tuple[float, Outcome | None]] = (
            collections.OrderedDict()
        )

    def settle(self, op_id: int, outcome: Outcome) -> None:
        """This node wrote ``op_id``'s result: answer its caller."""
        self._deliver(op_id, outcome)

    def _deliver(self, op_id: int, outcome: Outcome | None) -> None:
        future = self._waiting.get(op_id)
        if future is None:
            self._keep_early(op_id, outcome)
        elif not future.done():
            future.set_result(outcome)

    def _keep_early(self, op_id: int, outcome: Outcome | None) -> None:
        now = time.monotonic()
        early = self._early
        while early:
            oldest = next(iter(early.values()))
            if now - oldest[0] < EARLY_KEEP_S:
                break
            early.popitem(last=False)
        early[op_id] = (now, outcome)

    def stop(self) -> None:
        """``drivebayd`` stops: each caller still waiting looks at its
        operation once more, and is answered ``CallTimeout`` (it stays queued
        and runs once, elsewhere) when it has no result yet."""
        self._stopped = True
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)

    def relook(self) -> None:
        """The result channel is listened to again (``listener.Listener``):
        each waiter looks at its operation, whose notification may have
        come while nobody listened."""
        for future in self._waiting.values():
            if not future.done():
                future.set_result(None)

    def heard(self, payload: str) -> None:
        """A result notification: ``<id> <state> <result JSON>``, or ``<id>``
        alone for a result too large to carry (the waiter reads it)."""
        op_id, _, rest = payload.partition(" ")
        state, _, text = rest.partition(" ")
        try:
            outcome = Outcome(state == "done", msgspec.json.decode(text)) if text else None
        except msgspec.DecodeError:
            outcome = None
        self._deliver(int(op_id), outcome)

    async def wait(self, op_id: int, what: str, timeout: float, look: Look, gone: str) -> Any:
        """The result of ``op_id`` (``what``: the operation and its resource,
        for messages), or its error (``gone``: the message when the resource
        was removed meanwhile); bounded by ``timeout`` seconds. Call it
        right after the enqueue returns (no await in between), so that a
        result written here finds its waiter."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        future: asyncio.Future[Outcome | None] = loop.create_future()
        self._waiting[op_id] = future
        if op_id in self._early:  # its result came first
            future.set_result(self._early.pop(op_id)[1])
        try:
            while True:
                remaining = deadline - loop.time()
                if self._stopped and not future.done():
                    raise errors.CallTimeout(
                        f"drivebayd on node {self.settings.node_id} is stopping: operation "
                        f"#{op_id} ({what}) has no result yet; it stays queued and runs once on "
                        "another node ('drivebayctl call' again would run it twice)"
                    )
                if remaining <= 0:
                    raise errors.CallTimeout(
                        f"operation #{op_id} ({what}) has no result after {timeout:g}s; it "
                        "stays queued and runs once ('drivebayctl call' again would run it "
                        "twice)"
                    )
                await asyncio.wait({future}, timeout=min(remaining, self._poll_s))
                outcome = future.result() if future.done() else None
                if outcome is None:
                    try:
                        async with asyncio.timeout(self.settings.renew_s):
                            found = await look(op_id)
                    except (psycopg.Error, KernelError, TimeoutError) as exc:
                        # The database is away: the call stays queued; look again
                        # at the next poll, until the deadline.
                        log.debug("cluster results: #%s: %s; looking again", op_id, exc)
                        found = Finished("queued", None)
                    if found is None:
                        raise RequestError(gone)
                    if found.state in ("done", "failed"):
                        outcome = Outcome(found.state == "done", found.result)
                if outcome is not None:
                    if outcome.ok:
                        return outcome.result
                    raise error_of(outcome.result)
                if future.done():
                    future = self._waiting[op_id] = loop.create_future()
        finally:
            del self._waiting[op_id]
