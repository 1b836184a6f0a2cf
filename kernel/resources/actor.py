"""The actor of one resource: a task and a bounded mailbox.

Operations for a resource are delivered one at a time, in arrival order, to
the driver instance for that resource in the driver version the resource is
bound to. Between two operations the actor carries out *control steps*:
binding to another version (an upgrade or a pin: detach from the old
instance, attach on the new one, or the old instance hands its state to the
new one when both classes can, see ``state_move``), or re-attaching with
changed properties (the same way).
The mailbox keeps accepting meanwhile; a full mailbox refuses at once
(``Busy``), it never blocks the caller.

A driver crash: the operation in flight fails with ``DriverCrashed``; the
ones still queued wait for the restarted process (and the resource is
attached there first). A FATAL, stopped or absent driver fails operations at
once with an error that says so.

The task decides where each operation goes; a steady stream costs it no
wake-up per operation: the reply callback of one operation sends the next
when it is a plain operation for the same live process (``_replied``), and
hands back to the task for anything else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.drivers.state_move import Plan, end_handoff, hand_state, plan
from drivebay.kernel.log_format import slot_fields
from drivebay.kernel.metrics.meters import CANCELLED, CRASHED, OK, REFUSED, outcome_of
from drivebay.protocol.errors import (
    ALREADY_ATTACHED,
    Busy,
    CallTimeout,
    DriverCrashed,
    DriverError,
    Fenced,
    HandoverFailed,
    NotRunning,
    OperationFailed,
    RequestError,
)
from drivebay.sandbox.bundle_errors import shown
from drivebay.sandbox.cancel_safe import wait_out_cancels

if TYPE_CHECKING:
    from drivebay.kernel.drivers.process import DriverProcess
    from drivebay.kernel.drivers.slot import DriverSlot

log = logging.getLogger("drivebay.actor")


class DriverFatal(DriverError):
    """The resource's driver is FATAL (crash loop); start it or drop a fixed bundle."""


class DriverAbsent(RequestError):
    """The resource's driver (or pinned version) is not installed; drop its bundle."""

    exit_code = 1


@dataclass(slots=True)
class Operation:
    """One call of ``op`` for the resource, answered through ``future``.

    Once sent, ``process`` and ``request_id`` say where it went: the
    operation is then the actor's in-flight record (and, given up on after a
    timeout or a cancel, its unfinished one until the driver has ended it).
    The record is the operation itself, so a call allocates nothing more."""

    op: str
    args: dict[str, Any]
    timeout: float | None
    future: asyncio.Future[Any]
    process: DriverProcess | None = None
    request_id: int = 0
    sent_at: float = 0.0  # perf_counter() when sent, for the call-duration metric
    # A cluster's queued operation: its id and the owner's epoch travel with
    # the call, and ``guard`` (the fence) is asked immediately before the send.
    op_id: str = ""
    epoch: int = 0
    guard: Callable[[], bool] | None = None


@dataclass
class Rebind:
    """Move to ``slot`` (None: stay) and/or attach with new ``properties``."""

    slot: DriverSlot | None
    properties: dict[str, Any] | None
    withdrawn: bool = False  # a handover gave up on it: it must not move the actor any more
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


Router = Callable[["ResourceActor"], Awaitable["DriverSlot"]]  # raises DriverAbsent


class ResourceActor:
    def __init__(
        self,
        resource_id: str,
        driver: str,
        properties: dict[str, Any],
        router: Router,
        mailbox_size: int,
        wait_running_s: float = 60.0,
    ) -> None:
        self.resource_id = resource_id
        self.driver = driver
        self.properties = properties
        self.pinned: str | None = None
        self.bound: DriverSlot | None = None  # the version it is attached to (or will be)
        self._attached: DriverProcess | None = None  # the process holding its instance
        self._router = router
        # Operations and property changes, in arrival order (a change applies
        # after the operations queued before it); binding switches jump ahead.
        self._mailbox: collections.deque[Operation | Rebind] = collections.deque()
        self._control: collections.deque[Rebind] = collections.deque()
        self._size = mailbox_size
        self._wait_running_s = wait_running_s
        self._loop = asyncio.get_running_loop()  # actors live on the kernel's loop
        self._wake = asyncio.Event()
        self._busy = False
        self._current: Operation | Rebind | None = None
        self._in_flight: Operation | None = None  # the operation in the driver
        self._run_done: asyncio.Future[None] | None = None  # see _deliver
        # An operation answered to its caller (timed out, cancelled) that may
        # still run in the driver; nothing else is sent before it ends.
        self._unfinished: Operation | None = None
        self._attaching: DriverProcess | None = None  # an attach that may be in the driver
        self._task: asyncio.Task[None] | None = None
        # The old instance's detach after a state move (``_move_state``): sent
        # without waiting for it, awaited before the next control step and on close.
        self._ending: asyncio.Task[None] | None = None
        self._closed = False
        self.last_error = ""
        self.last_event: dict[str, Any] | None = None  # the driver's latest event for it

    # -- callers -------------------------------------------------------------------

    def submit(
        self,
        op: str,
        args: dict[str, Any],
        timeout: float | None = None,
        *,
        op_id: str = "",
        epoch: int = 0,
        guard: Callable[[], bool] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue an operation; its future gets the result. Raises Busy when full.

        A cluster's owner gives the queued operation's ``op_id``, its
        ``epoch``, and a ``guard`` asked immediately before the call is
        written to the driver: when it says no, the future fails with
        ``Fenced`` and nothing is sent."""
        if self._closed:
            raise RequestError(f"resource {self.resource_id} was removed")
        if len(self._mailbox) >= self._size:
            raise Busy(
                f"resource {self.resource_id} is busy: {self._size} operations already "
                "queued; retry later"
            )
        future: asyncio.Future[Any] = self._loop.create_future()
        if guard is None:
            self._mailbox.append(Operation(op, args, timeout, future))
        else:
            self._mailbox.append(
                Operation(op, args, timeout, future, None, 0, 0.0, op_id, epoch, guard)
            )
        if not self._busy:  # a busy actor looks at its mailbox before it waits
            self._wake.set()
        return future

    def rebind(
        self, slot: DriverSlot | None, properties: dict[str, Any] | None = None
    ) -> asyncio.Future[None]:
        """Between two operations: move to ``slot`` and/or re-attach with
        ``properties``. The future fails if the new attach fails (the actor is
        then back on its previous binding). A property change waits for the
        operations queued before it; a move to another slot does not."""
        return self.rebind_step(slot, properties).done

    def rebind_step(
        self, slot: DriverSlot | None, properties: dict[str, Any] | None = None
    ) -> Rebind:
        """``rebind``, returning the step itself (a handover may withdraw it)."""
        if self._closed:
            raise RequestError(f"resource {self.resource_id} was removed")
        step = Rebind(slot, properties)
        (self._mailbox if properties is not None else self._control).append(step)
        self._wake.set()
        return step

    @property
    def attached(self) -> bool:
        return self._attached is not None and self._attached.alive

    @property
    def state_text(self) -> str:
        if self.attached:
            return "attached"
        return f"detached: {self.last_error}" if self.last_error else "detached"

    def needs_attach(self, slot: DriverSlot) -> bool:
        """Is ``slot`` running a process that does not hold our instance yet?"""
        process = slot.process
        return (
            slot.state is State.RUNNING
            and process is not None
            and process.alive
            and self._attached is not process
        )

    @property
    def queued(self) -> int:
        return len(self._mailbox) + (1 if self._busy else 0)

    # -- the task ------------------------------------------------------------------

    def launch(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"actor {self.resource_id}")

    async def close(self, detach: bool = True, reason: str = "was removed") -> None:
        """Stop taking operations; fail the one in flight and the queued ones
        (their callers get an answer, never silence); detach; end the task.

        A cancellation of the caller while the task ends is held until the
        actor is closed (answered, detached), then raised."""
        self._closed = True
        current = self._current  # read before the task's own cleanup forgets it
        cancelled = await self._end_task()
        gone = RequestError(f"resource {self.resource_id} {reason}")
        pending = [*self._mailbox, *self._control]
        if current is not None:
            pending.append(current)
        for item in pending:
            _fail(item.future if isinstance(item, Operation) else item.done, gone)
        self._mailbox.clear()
        self._control.clear()
        await self.handoff_ended()
        if detach:
            await self._detach()
        if cancelled:
            raise asyncio.CancelledError

    @property
    def ending(self) -> asyncio.Task[None] | None:
        """The old instance's detach after the last state move, while it runs."""
        ending = self._ending
        return ending if ending is not None and not ending.done() else None

    async def handoff_ended(self) -> None:
        """Return once the old instance of the last state move is detached
        (bounded by that process's call timeout)."""
        ending = self._ending
        if ending is None:
            return
        await asyncio.wait([ending])
        if self._ending is ending:
            self._ending = None

    async def _end_task(self) -> bool:
        """Cancel the task and wait for its end; True if the caller was
        cancelled meanwhile."""
        task = self._task
        if task is None:
            return False
        task.cancel()
        cancelled = await wait_out_cancels([task])
        if not task.cancelled() and task.exception() is not None:
            log.error("actor %s had failed", self.resource_id, exc_info=task.exception())
        return cancelled

    async def _run(self) -> None:
        while True:
            if not self._mailbox and not self._control:
                self._wake.clear()
                await self._wake.wait()
            while self._control:
                step = self._control.popleft()
                self._current = step
                await self._apply(step)
                self._current = None
            if self._mailbox:
                item = self._mailbox.popleft()
                self._current = item
                self._busy = True
                try:
                    if isinstance(item, Rebind):
                        await self._apply(item)
                    elif not item.future.done():  # else the caller gave up before delivery
                        await self._deliver(item)
                finally:
                    self._busy = False
                    self._current = None

    async def _deliver(self, item: Operation) -> None:
        """Deliver ``item``, then the operations queued behind it for as long
        as nothing else needs the task (see ``_replied``)."""
        try:
            if self._unfinished is not None:  # no coroutine when there is nothing to wait for
                await self._quiesce()
            process = await self._ready()
            if process.send_blocked:
                await process.writable()
        except Exception as exc:
            _fail(item.future, exc)
            return
        self._run_done = self._loop.create_future()
        self._send(process, item)
        try:
            await self._run_done
        except asyncio.CancelledError:  # close(): give up on the call in flight
            flight = self._in_flight
            if flight is not None and flight.process is not None:
                flight.process.cancel_call(flight.request_id)
                self._unfinished = flight  # close() waits for its end before detaching
            raise
        finally:
            self._in_flight = None

    def _send(self, process: DriverProcess, item: Operation) -> None:
        if item.guard is not None and not item.guard():  # a cluster owner fenced: not sent
            _fail(
                item.future,
                Fenced(
                    f"resource {self.resource_id}: this node may not act on it now; "
                    "the operation was not sent"
                ),
            )
            _settle(self._run_done)
            return
        try:
            request_id, reply = process.start_call(
                self.resource_id,
                item.op,
                item.args,
                item.timeout,
                op_id=item.op_id,
                epoch=item.epoch,
                at_once=item.guard is not None,  # written right after the fence said yes
            )
        except Exception as exc:  # the process is gone, or a value it cannot take
            if isinstance(exc, DriverCrashed):
                self._attached = None
            if process.meter is not None:
                process.meter.count(item.op, CRASHED if isinstance(exc, DriverCrashed) else REFUSED)
            _fail(item.future, exc)
            _settle(self._run_done)  # the task goes on with the next one
            return
        item.process, item.request_id = process, request_id
        if process.meter is not None:
            item.sent_at = perf_counter()
        self._in_flight = item
        reply.add_done_callback(self._replied)

    def _replied(self, reply: asyncio.Future[Any]) -> None:
        """An operation is answered: pass the answer on and send the next
        operation from here, without a task switch, when it may go to the same
        process as it is; else hand back to the task (a control step, a
        property change, a crash, an empty mailbox)."""
        item, self._in_flight = self._in_flight, None
        if item is None:  # _deliver was cancelled
            return
        process = item.process
        assert process is not None  # set when it was sent
        meter = process.meter
        if reply.cancelled():  # only cancel_call does that; never leave the task waiting
            if meter is not None:
                meter.record(item.op, CANCELLED, perf_counter() - item.sent_at)
            self._unfinished = item
            _fail(item.future, RequestError(f"resource {self.resource_id}: operation cancelled"))
            _settle(self._run_done)
            return
        exc = reply.exception()
        if meter is not None:  # on every call's path: no call more than needed
            outcome = OK if exc is None else outcome_of(exc)
            meter.record(item.op, outcome, perf_counter() - item.sent_at)
        if isinstance(exc, CallTimeout):  # answered, but it may still run: the task waits
            self._unfinished = item
            _fail(item.future, exc)
            _settle(self._run_done)
            return
        if exc is None:
            if not item.future.done():
                item.future.set_result(reply.result())
        else:
            if isinstance(exc, DriverCrashed):
                self._attached = None  # its instance died with the process
            elif isinstance(exc, OperationFailed):
                log_failure(process.name, self.resource_id, item.op, exc)
            _fail(item.future, exc)
        following = self._next_for(process)
        if following is None:
            _settle(self._run_done)
            return
        self._current = following
        self._send(process, following)

    def _next_for(self, process: DriverProcess) -> Operation | None:
        """The next operation, if it may be sent to ``process`` straight away."""
        while self._mailbox and not self._control and not self._closed:
            item = self._mailbox[0]
            slot = self.bound
            if (
                type(item) is not Operation
                or self._attached is not process
                or slot is None
                or slot.closed
                or slot.state is not State.RUNNING
                or slot.process is not process
                or not process.alive
                or process.send_blocked
            ):
                return None
            self._mailbox.popleft()
            if not item.future.done():  # else the caller gave up before delivery
                return item
        return None

    async def _ready(self) -> DriverProcess:
        """The running process of the bound version, with our instance attached."""
        slot = self.bound
        if slot is None or slot.closed:  # never bound, or its version went away
            self._attached = None
            slot = self.bound = await self._router(self)
        process = slot.process
        if slot.state is not State.RUNNING or process is None or not process.alive:
            try:
                process = await self._wait_running(slot)
            except TimeoutError:
                raise NotRunning(
                    f"{slot.name} did not come back within {self._wait_running_s:g}s "
                    f"({slot.state}: {slot.lifecycle.reason}); the operation was not sent"
                ) from None
        if self._attached is not process:
            self._attaching = process  # stays set if we are cancelled: close() detaches there
            try:
                await self._attach(process)
            except Exception as exc:
                self._attaching = None
                self.last_error = f"attach on {slot.name} failed: {exc}"
                raise
            self._attaching = None
            self._attached = process
            self.last_error = ""
        return process

    async def _wait_running(self, slot: DriverSlot) -> DriverProcess:
        """Wait (bounded) for the slot to run a live process; fail at once when
        it will not by itself (FATAL, FAILED, stopped by an operator)."""
        async with asyncio.timeout(self._wait_running_s):
            while True:
                process = slot.process
                state = slot.state
                if state is State.RUNNING and process is not None and process.alive:
                    return process
                name = slot.manifest.name
                if state is State.FATAL:
                    raise DriverFatal(
                        f"{slot.name} is FATAL ({slot.lifecycle.reason}); drivebayctl start {name}"
                    )
                if slot.closed:
                    raise NotRunning(f"{slot.name} was removed; retry to reach its successor")
                if state is State.BLOCKED:  # starting it would not help: its requirement first
                    raise NotRunning(
                        f"{slot.name} is BLOCKED ({slot.lifecycle.reason}); the operation was "
                        "not sent; start what it requires, and it follows"
                    )
                if state in (State.FAILED, State.INVALID) or (
                    state in (State.STOPPED, State.STOPPING) and slot.held
                ):
                    raise NotRunning(
                        f"{slot.name} is {state} ({slot.lifecycle.reason}); "
                        f"the operation was not sent; drivebayctl start {name}"
                    )
                # Restarting, or RUNNING with a process that just died and whose
                # exit the supervisor is about to see: wait for its next move.
                await slot.next_move()

    async def _quiesce(self) -> None:
        """Wait until the driver has ended the operation given up on last (a
        timed-out or cancelled one): the next must not run beside it. A driver
        that has not ended it within its call timeout is killed as hung (the
        supervisor restarts it) rather than leave the resource stuck."""
        if self._unfinished is None:
            return
        process = self._unfinished.process
        assert process is not None  # only a sent operation is unfinished
        ended = process.finished(self._unfinished.request_id)
        if ended is not None:
            grace = process.timeouts.call_s
            try:
                await asyncio.wait_for(asyncio.shield(ended), grace)
            except TimeoutError:
                process.kill_hung(
                    f"an operation on {self.resource_id} did not end within {grace:g}s "
                    "of its cancellation"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ended), process.timeouts.kill_s + 5)
        self._unfinished = None

    async def _apply(self, step: Rebind) -> None:
        await self.handoff_ended()  # a move back must not reach the old process before it
        await self._quiesce()
        if step.withdrawn or step.done.done():
            return
        previous = self.bound
        old_properties = self.properties
        target = step.slot or previous
        try:
            if step.properties is not None:
                self.properties = step.properties
            moving = target is not previous or step.properties is not None
            if moving and not await self._move_state(target):
                await self._detach()
                self.bound = target
            if target is not None and self.needs_attach(target):
                await self._ready()  # also after a restart: attach-time work resumes
        except HandoverFailed as exc:  # the old instance got handoff_aborted: it serves on
            log.warning(
                "%s: could not move to %s: %s; staying on %s",
                self.resource_id,
                target.name if target else "-",
                exc,
                previous.name if previous else "-",
            )
            self.properties = old_properties
            _fail(step.done, exc)
        except Exception as exc:
            log.warning(
                "%s: could not attach on %s: %s; staying on %s",
                self.resource_id,
                target.name if target else "-",
                exc,
                previous.name if previous else "-",
            )
            self.properties = old_properties
            await self._detach()
            self.bound = previous
            try:
                if previous is not None and previous.state is State.RUNNING:
                    await self._ready()
            except Exception as again:  # the old binding is gone too: next op retries
                log.warning("%s: re-attach on %s failed too: %s", self.resource_id, previous, again)
            _fail(step.done, exc)
        else:
            if not step.done.done():
                step.done.set_result(None)

    async def _move_state(self, target: DriverSlot | None) -> bool:
        """Move the instance to ``target``'s process with its state (``handoff``
        then ``takeover``) when both sides' classes can; False when the move is
        a detach and an attach instead. Raises HandoverFailed when the state
        did not move (the old instance serves on)."""
        old = self._attached
        if old is None or not old.alive or target is None or self._attaching is not None:
            return False
        new = target.process
        if target.state is not State.RUNNING or new is None or not new.alive:
            if "handoff" in old.hooks:
                log.warning(
                    "%s: %s is not running; the state %s holds on %s is dropped "
                    "(it attaches there once it runs)",
                    self.resource_id,
                    target.name,
                    self.resource_id,
                    old.name,
                    extra=slot_fields(target.name, "state_dropped", resource=self.resource_id),
                )
            return False
        decided = plan(old.hooks, new.hooks)
        if decided is Plan.ATTACH:
            return False
        if decided is Plan.DROP:
            log.warning(
                "%s: %s has no takeover; the state %s holds on %s is dropped (attach instead)",
                self.resource_id,
                new.name,
                self.resource_id,
                old.name,
                extra=slot_fields(new.name, "state_dropped", resource=self.resource_id),
            )
            return False
        await hand_state(old, new, self.resource_id, self.properties, old.spec.version)
        self._attached = new
        self.bound = target
        self.last_error = ""
        self._ending = self._loop.create_task(
            end_handoff(old, self.resource_id), name=f"detach {self.resource_id} after handoff"
        )
        return True

    async def _attach(self, process: DriverProcess) -> None:
        try:
            await process.attach(self.resource_id, self.properties)
        except OperationFailed as exc:
            if exc.type_name != ALREADY_ATTACHED:
                raise
            # An earlier attach we gave up on (its deadline passed) finished
            # anyway: replace that instance with one of the current properties.
            await process.detach(self.resource_id)
            await process.attach(self.resource_id, self.properties)

    async def _detach(self) -> None:
        await self._quiesce()
        process, self._attached = self._attached, None
        attaching, self._attaching = self._attaching, None
        # An attach given up on may have finished in the driver anyway: detach
        # there too (the driver's detach is idempotent).
        process = process or attaching
        if process is not None and process.alive:
            try:
                await process.detach(self.resource_id)
            except DriverError as exc:
                log.warning("%s: detach from %s failed: %s", self.resource_id, process.name, exc)


def log_failure(driver: str, resource_id: str, op: str, exc: OperationFailed) -> None:
    """An operation raised: one line naming who and what, then the driver's
    traceback, each of its lines escaped and indented, so that nothing the
    driver wrote can pass for a line of the daemon's own."""
    trace = "".join(f"\n    {shown(line)}" for line in exc.traceback.rstrip("\n").split("\n"))
    log.warning(
        "%s: %s on %s raised %s%s",
        driver,
        shown(op),
        resource_id,
        shown(str(exc)),
        trace if exc.traceback else " (no traceback)",
        extra=slot_fields(driver, "operation_failed", resource=resource_id, operation=op),
    )


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``future`` unless answered; an unawaited one must not log a traceback."""
    if not future.done():
        future.set_exception(exc)
        future.add_done_callback(_consume)


def _settle(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
