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
result notification arrive on two connections, in either order. So a call
is ``expecting`` from before its enqueue until its waiter registers, and a
result nobody waits for is kept while a call that was expecting when it
came still is (without this, such a call waited a whole ``poll_s``); any
other is dropped at once: the results this node's worker writes for calls
other nodes accepted, and those of waiters that gave up.
A call whose resource was removed meanwhile is answered "removed". One
that has no result in time is answered ``CallTimeout`` naming its
operation id: it stays queued and runs once; so is one still waiting when
``drivebayd`` stops (``stop``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import psycopg

from drivebay.kernel.cluster.connection import loaded_json
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
        # The calls between their enqueue and their waiter (``expecting``), by
        # the order they began in (oldest first), and how many ever began.
        self._expecting: dict[int, None] = {}
        self._begun = 0
        # op id -> (calls begun when it came, its outcome or None: look it up),
        # oldest first: results that came while a call was expecting
        self._early: collections.OrderedDict[int, tuple[int, Outcome | None]] = (
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
        if self._expecting:  # else no call here can claim it
            self._early.pop(op_id, None)  # kept in the order they came
            self._early[op_id] = (self._begun, outcome)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[Callable[[], None]]:
        """Around a call's enqueue and its ``wait`` (given what this yields
        as ``registered``): a result that comes before the waiter registers
        is kept for it."""
        self._begun += 1
        call = self._begun
        self._expecting[call] = None

        def registered() -> None:
            if self._expecting.pop(call, 0) is None:
                self._drop_unclaimable()

        try:
            yield registered
        finally:
            registered()

    def _drop_unclaimable(self) -> None:
        """Drop the results that came before every call still expecting began."""
        oldest = next(iter(self._expecting), None)
        early = self._early
        while early:
            came_after = next(iter(early.values()))[0]
            if oldest is not None and came_after >= oldest:
                break
            early.popitem(last=False)

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
        if not op_id.isdigit():  # not one of ours (anyone connected may notify)
            log.debug("cluster results: a notification that is not a result: %.80r", payload)
            return
        try:
            outcome = Outcome(state == "done", loaded_json(text)) if text else None
        except (msgspec.DecodeError, UnicodeEncodeError):
            outcome = None
        self._deliver(int(op_id), outcome)

    async def wait(
        self,
        op_id: int,
        what: str,
        timeout: float,
        look: Look,
        gone: str,
        *,
        registered: Callable[[], None] | None = None,
    ) -> Any:
        """The result of ``op_id`` (``what``: the operation and its resource,
        for messages), or its error (``gone``: the message when the resource
        was removed meanwhile); bounded by ``timeout`` seconds. Call it
        right after the enqueue returns (no await in between), inside
        ``expecting`` (``registered``: what it yields), so that a result that
        came first finds its waiter."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        future: asyncio.Future[Outcome | None] = loop.create_future()
        self._waiting[op_id] = future
        if op_id in self._early:  # its result came first
            future.set_result(self._early.pop(op_id)[1])
        if registered is not None:
            registered()
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
