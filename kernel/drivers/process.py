"""One running driver version, seen from the kernel: start, call, watch, stop.

``start`` spawns the child and returns once it has said ``Hello`` (protocol
agreed) and ``Ready`` (driver class loaded), within a deadline; otherwise the
child is killed and reaped and ``DriverStartError`` says why. Calls are
multiplexed on the channel, each with an id, a deadline and cancellation. A
watcher task pings the child and notices its exit; on exit every call in
flight fails at once with ``DriverCrashed`` (or ``DriverHung``). ``stop`` is
staged (Drain, then SIGTERM, then SIGKILL to the process group) and always
ends with the child reaped, even when the stopping task is cancelled.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import secrets
import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from drivebay.kernel.config import TimeoutSettings
from drivebay.kernel.drivers.deadlines import Deadlines
from drivebay.kernel.drivers.fd_room import DescriptorRoom
from drivebay.kernel.drivers.handover_requests import HandoverRequests
from drivebay.kernel.drivers.spare_priority import ImportNice, renice
from drivebay.kernel.log_format import slot_fields
from drivebay.protocol.codec import MessageCodec
from drivebay.protocol.errors import (
    CallTimeout,
    DriverCrashed,
    DriverError,
    DriverHung,
    DriverStartError,
    OperationFailed,
    ProtocolError,
    RequestError,
)
from drivebay.protocol.fd_passing import FdInbox
from drivebay.protocol.messages import (
    Attach,
    Call,
    Cancel,
    Detach,
    Drain,
    Error,
    Event,
    Health,
    Hello,
    Log,
    Ping,
    Pong,
    Ready,
    Reconcile,
    Refuse,
    Result,
    ToKernel,
    Welcome,
)
from drivebay.protocol.msgpack_lite import MAX_DEPTH
from drivebay.protocol.versions import PROTOCOL_MAX, PROTOCOL_MIN, describe_mismatch, negotiate
from drivebay.sandbox.bundle_errors import shown
from drivebay.sandbox.cancel_safe import wait_out_cancels
from drivebay.sandbox.spawn import ChildProcess, SpawnSpec, describe_exit, spawn_child

if TYPE_CHECKING:
    from drivebay.kernel.metrics.meters import CallMeter

log = logging.getLogger("drivebay.driver")

EventHandler = Callable[[str, str, Any], None]


class DriverProcess(HandoverRequests):
    """A driver child and the kernel's conversation with it."""

    def __init__(
        self,
        spec: SpawnSpec,
        timeouts: TimeoutSettings | None = None,
        on_event: EventHandler | None = None,
    ) -> None:
        self.spec = spec
        self.name = f"{spec.driver}@{spec.version}"
        self.timeouts = timeouts or TimeoutSettings()
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        # Calls given up on (deadline passed, or cancelled) that the child has
        # not ended yet, with a waiter once somebody asks (see ``finished``).
        self._unfinished: dict[int, asyncio.Future[None] | None] = {}
        self._max_depth = 0  # nesting the child's codec takes in a call (0: no check)
        self._deadlines = Deadlines(self._loop, self._pending, self._expire)
        self._hello: asyncio.Future[Hello] = self._loop.create_future()
        self._ready: asyncio.Future[Ready] = self._loop.create_future()
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._child: ChildProcess | None = None
        self._channel: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._death: str | None = None  # why the kernel ended the child, if it did
        self._driver_pid = 0  # known from Hello
        self._stopping = False
        self.hello: Hello | None = None
        self.ready: Ready | None = None
        # Where the resource actors count its operations (the slot sets it).
        self.meter: CallMeter | None = None
        self._fd_inbox = FdInbox(strict=True)  # descriptors a handoff's reply brought
        self._fd_reader = -1  # the descriptor channel's fd while the loop reads it
        self._room = DescriptorRoom(spec.rlimits.get("nofile", 0))  # for takeovers
        # A spare's nice values: ``low`` until its Hello, then ``base`` (None: as spawned).
        self.import_nice: ImportNice | None = None
        self._op_id_ops: frozenset[str] = frozenset()  # operations that declare op_id
        self._op_id_prefix = f"{secrets.token_hex(6)}-"  # a call's op_id: this and its id

    # -- facts ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The driver's pid (outside its PID namespace); its process group,
        which the kernel signals, is ``group``."""
        return self._driver_pid or self.group

    @property
    def group(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def returncode(self) -> int | None:
        return self._child.returncode if self._child else None

    @property
    def alive(self) -> bool:
        return self._child is not None and not self._child.exited.done()

    @property
    def exited(self) -> asyncio.Future[int]:
        assert self._child is not None, "not started"
        return self._child.exited

    def stderr_tail(self, lines: int = 10) -> str:
        return self._child.stderr_tail(lines) if self._child else ""

    # -- start ---------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the child and complete the handshake.

        Raises DriverStartError (child killed and reaped) when the interpreter
        cannot run, the child exits or stays silent past the start deadline,
        speaks no common protocol version, or fails to load the driver class.
        """
        await self.launch()
        await self.finish_start()

    async def launch(self) -> None:
        """Spawn the child and wait for its Hello: the interpreter is up and the
        runtime imported, but no driver code is loaded yet. A *spare* waits
        here until ``finish_start``; errors as for ``start``."""
        from drivebay.kernel.drivers.channel import FramedChannel

        try:
            self._child = await spawn_child(self.spec)
        except OSError as exc:
            raise DriverStartError(_spawn_failure(self.name, self.spec.python, exc)) from exc
        fd_channel = self._child.fd_channel
        self._fd_reader = fd_channel.fileno()
        self._loop.add_reader(self._fd_reader, self._drain_fds)
        codec: MessageCodec[ToKernel] = MessageCodec(
            ToKernel, f"driver {self.name}", self.spec.max_frame
        )
        self._channel = FramedChannel(codec, self._on_message, self._on_violation)
        await self._starting(self._hello_at(self.import_nice))

    async def _hello_at(self, nice: ImportNice | None) -> None:
        """``_connect_and_hello``, the child's whole group at ``nice.low``
        meanwhile (its imports), then at ``nice.base``. An OSError of the
        renicing (say, it exited meanwhile) fails the launch as any error does."""
        assert self._child is not None
        if nice is not None:
            renice(self._child.pid, nice.low)
        await self._connect_and_hello()
        if nice is not None:
            renice(self._child.pid, nice.base)

    async def finish_start(self) -> None:
        """Welcome the launched child, wait until it has loaded the driver
        (Ready), and start watching it."""
        if not self.alive:
            raise self._start_error("exited while waiting to be started")
        await self._starting(self._welcome_and_ready())
        self._watcher = self._loop.create_task(self._watch(), name=f"watch {self.name}")
        log.info(
            "spawned: %s pid %d (codec %s)",
            self.name,
            self.pid,
            self.hello_codec,
            extra=slot_fields(self.name, "spawned"),
        )

    async def _starting(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a start step under the start deadline; on any failure the child
        is killed and reaped before the error goes up."""
        try:
            async with asyncio.timeout(self.timeouts.start_s):
                await step
        except BaseException as exc:
            if isinstance(exc, DriverStartError) and self.alive:
                # It was told (refusal) or knows (load error) that it must exit:
                # let it, so its exit status and last words are its own.
                assert self._child is not None
                try:
                    await asyncio.wait([self._child.exited], timeout=self.timeouts.term_s)
                finally:  # cancelled meanwhile too: never leave it unreaped
                    await self._kill_and_reap()
            else:
                await self._kill_and_reap()
            if isinstance(exc, TimeoutError):
                raise self._start_error(
                    f"did not finish its handshake within {self.timeouts.start_s:g}s"
                ) from exc
            raise

    async def _connect_and_hello(self) -> None:
        assert self._child is not None
        await self._loop.connect_accepted_socket(lambda: self._channel, self._child.channel)
        self.hello = await self._before_exit(self._hello, "saying hello")
        self._driver_pid = self._child.driver_pid(self.hello.pid)
        # The stdlib codec stops at a nesting depth msgspec (here) goes past:
        # a call nested deeper would end that child's channel.
        self._max_depth = MAX_DEPTH if self.hello.codec.startswith("stdlib") else 0
        theirs = (self.hello.min_version, self.hello.max_version)
        if negotiate((PROTOCOL_MIN, PROTOCOL_MAX), theirs) is None:
            reason = describe_mismatch((PROTOCOL_MIN, PROTOCOL_MAX), theirs)
            self._channel.send(Refuse(reason))
            raise self._start_error(reason)

    async def _welcome_and_ready(self) -> None:
        assert self.hello is not None
        theirs = (self.hello.min_version, self.hello.max_version)
        version = negotiate((PROTOCOL_MIN, PROTOCOL_MAX), theirs)
        assert version is not None
        self._channel.send(Welcome(version, self.spec.driver))
        self.ready = await self._before_exit(self._ready, "loading the driver")
        self._op_id_ops = frozenset(
            name for name, info in self.ready.details.items() if info.takes_op_id
        )

    @property
    def hello_codec(self) -> str:
        return self.hello.codec if self.hello else ""

    @property
    def hello_loop(self) -> str:
        return self.hello.loop if self.hello else ""

    async def _before_exit(self, step: asyncio.Future[Any], doing: str) -> Any:
        assert self._child is not None
        await asyncio.wait([step, self._child.exited], return_when=asyncio.FIRST_COMPLETED)
        if step.done():
            return step.result()  # may raise the load error set by _on_message
        await self._child.output_drained(self.timeouts.kill_s)
        raise self._start_error(
            f"exited ({describe_exit(self._child.exited.result())}) before {doing}"
        )

    def _start_error(self, what: str) -> DriverStartError:
        tail = self.stderr_tail()
        return DriverStartError(f"{self.name} {what}" + (f"; stderr: {tail}" if tail else ""))

    # -- requests ------------------------------------------------------------------

    def call(
        self,
        resource_id: str,
        op: str,
        args: dict[str, Any],
        timeout: float | None = None,
        *,
        op_id: str = "",
        epoch: int = 0,
    ) -> Coroutine[Any, Any, Any]:
        """Run ``op`` on the instance for ``resource_id``; await it for its result.

        Raises OperationFailed (the driver raised), CallTimeout, DriverCrashed
        or DriverHung (the process died with the call in flight). A plain
        function returning the request's coroutine: one coroutine per call,
        not two (this is the hot path of every caller that awaits).
        ``op_id`` is the operation's id when the caller has one (a cluster's
        queued operation); an operation that declares ``op_id`` gets it, or
        else the call's own id. ``epoch``: the epoch the resource is held
        under (0: no cluster).
        """
        limit = self.timeouts.call_s if timeout is None else timeout
        if self._max_depth:
            self._check_depth(args, op)
        request_id = next(self._ids)
        if op in self._op_id_ops:
            op_id = self._op_id(op, args, request_id, op_id)
        message = Call(request_id, resource_id, op, args, limit, op_id, epoch)
        return self._request(request_id, message, limit, (op, resource_id))

    def _op_id(self, op: str, args: dict[str, Any], request_id: int, given: str) -> str:
        """The op_id of a call of ``op`` (which declares it): ``given``, or the
        call's own id, unique to this process of the kernel's. Raises
        RequestError when the arguments hold one."""
        if "op_id" in args:
            raise RequestError(
                f"{self.name}: operation {op} takes its op_id from the kernel; "
                "do not pass op_id as an argument"
            )
        return given or f"{self._op_id_prefix}{request_id}"

    @property
    def can_reconcile(self) -> bool:
        """Its driver class defines ``reconcile_operation``: ``reconcile`` may ask it."""
        return "reconcile_operation" in self.hooks

    async def reconcile(
        self,
        resource_id: str,
        op_id: str,
        operation: str,
        args: dict[str, Any],
        *,
        epoch: int = 0,
        timeout: float | None = None,
    ) -> Any:
        """Ask the instance for ``resource_id`` what became of ``op_id``
        (``operation(**args)``, sent once and not seen to end): the result of
        its ``reconcile_operation``. Raises OperationFailed with the driver's
        error (``NoReconcile``: its class has no such hook, see ``hooks``),
        CallTimeout, DriverCrashed."""
        limit = self.timeouts.call_s if timeout is None else timeout
        if self._max_depth:
            self._check_depth(args, operation)
        request_id = next(self._ids)
        message = Reconcile(request_id, resource_id, op_id, operation, args, epoch)
        what = f"reconcile_operation of {operation} on {resource_id}"
        return await self._request(request_id, message, limit, what)

    def start_call(
        self,
        resource_id: str,
        op: str,
        args: dict[str, Any],
        timeout: float | None = None,
        *,
        op_id: str = "",
        epoch: int = 0,
        at_once: bool = False,
    ) -> tuple[int, asyncio.Future[Any]]:
        """``call`` without a task: send now, return the request id and the
        future of its result (the errors ``call`` raises, set on the future).
        ``at_once``: the frame is handed to the transport now, not at the end
        of the loop's pass with the others (a cluster owner's guarded call:
        nothing may come between its fence check and the write).

        For callers that chain calls from callbacks (the resource actors) or
        keep a window of calls in flight. Nobody awaits the future for you:
        give it a done callback, and ``cancel_call`` the id to give up on it.
        Raises DriverCrashed at once when the process is not running.
        """
        limit = self.timeouts.call_s if timeout is None else timeout
        if self._max_depth:
            self._check_depth(args, op)
        request_id = next(self._ids)
        if op in self._op_id_ops:
            op_id = self._op_id(op, args, request_id, op_id)
        message = Call(request_id, resource_id, op, args, limit, op_id, epoch)
        reply = self._send_request(request_id, message, limit, (op, resource_id))
        if at_once:
            self._channel.outbox.flush()
        return request_id, reply

    def _check_depth(self, args: dict[str, Any], op: str) -> None:
        """Raises RequestError when ``args`` nest deeper than the child's codec takes."""
        level = 1
        stack: list[dict[Any, Any] | list[Any] | tuple[Any, ...]] = [args]
        while stack:
            if level >= self._max_depth - 4:  # the Call message wraps args in two levels
                raise RequestError(
                    f"the arguments of {op} nest deeper than {self._max_depth - 4} levels, "
                    f"more than {self.name} can read (its environment has no msgspec); "
                    "send flatter arguments"
                )
            stack = [
                child
                for value in stack
                for child in (value.values() if isinstance(value, dict) else value)
                if isinstance(child, (dict, list, tuple))
            ]
            level += 1

    def cancel_call(self, request_id: int) -> None:
        """Give up on a call of ``start_call``: its future is cancelled and
        the driver asked to cancel it (a no-op once it has been answered)."""
        future = self._pending.pop(request_id, None)
        if future is not None and not future.done():
            self._give_up(request_id)
            future.cancel()

    def finished(self, request_id: int) -> asyncio.Future[None] | None:
        """None when the child has ended the call ``request_id`` (or is gone);
        else a future that resolves when it does. A call given up on (its
        deadline passed, or it was cancelled) has been answered to its caller
        at once, but may still be running in the child: a sync operation's
        thread cannot be stopped. Whoever sends the next operation for the
        same resource waits for this first (the resource actors do)."""
        if request_id not in self._unfinished:
            return None
        waiter = self._unfinished[request_id]
        if waiter is None:
            waiter = self._unfinished[request_id] = self._loop.create_future()
        return waiter

    def kill_hung(self, reason: str) -> None:
        """Kill the child as hung (its calls fail with DriverHung; the
        supervisor restarts it): for a call that would not end when asked."""
        if self.alive:
            self._end(f"hung: {reason}", signal.SIGKILL)

    def _give_up(self, request_id: int) -> None:
        """Ask the child to cancel a call whose caller got its answer already."""
        if self.alive:
            self._unfinished[request_id] = None
            self._channel.send(Cancel(request_id))

    def _ended(self, request_id: int) -> None:
        """The child's final reply to a call given up on: it is over now."""
        waiter = self._unfinished.pop(request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def send_blocked(self) -> bool:
        """The channel's write buffer is full: wait for ``writable`` before sending more."""
        return self._channel is not None and bool(self._channel.outbox.full)

    async def writable(self) -> None:
        """Return when the channel takes writes again (callers add a deadline)."""
        await self._channel.outbox.wait_writable()

    async def attach(self, resource_id: str, properties: dict[str, Any]) -> None:
        request_id = next(self._ids)
        await self._request(
            request_id,
            Attach(request_id, resource_id, properties),
            self.timeouts.call_s,
            f"attach of {resource_id}",
        )

    async def detach(self, resource_id: str) -> None:
        request_id = next(self._ids)
        await self._request(
            request_id,
            Detach(request_id, resource_id),
            self.timeouts.call_s,
            f"detach of {resource_id}",
        )

    async def health(self) -> dict[str, Any]:
        """The driver's own health report; raises OperationFailed when it says not ok."""
        request_id = next(self._ids)
        value = await self._request(request_id, Health(request_id), self.timeouts.call_s, "health")
        report = value if isinstance(value, dict) else {"ok": bool(value)}
        if report.get("ok", True) is False:
            detail = report.get("reason") or report.get("message") or report
            raise OperationFailed("HealthCheckFailed", f"{self.name} reports not ok: {detail}")
        return report

    async def answers(self, timeout: float) -> bool:
        """Does the child answer a ping within ``timeout``? For a spare
        (launched, not started: no watcher pings it); False once it exited."""
        if not self.alive or self._channel is None or self._death is not None:
            return False
        seq = -next(self._ids)  # negative: never one of the watcher's
        pong: asyncio.Future[None] = self._loop.create_future()
        self._pongs[seq] = pong
        try:
            self._channel.send(Ping(seq))
            await asyncio.wait(
                [pong, self.exited],  # type: ignore[type-var]  # Future[None] and Future[int]
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self._pongs.pop(seq, None)
        return pong.done()

    async def _request(
        self, request_id: int, message: Any, limit: float, what: str | tuple[str, str]
    ) -> Any:
        future = self._send_request(request_id, message, limit, what)
        try:
            if self._channel.outbox.full:
                await self._channel.outbox.wait_writable()
            return await future
        except asyncio.CancelledError:
            if self._pending.get(request_id) is future:
                self._give_up(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)

    def _send_request(
        self, request_id: int, message: Any, limit: float, what: str | tuple[str, str]
    ) -> asyncio.Future[Any]:
        if self._death is not None or not self.alive:
            raise DriverCrashed(f"{self.name} is not running; {_what(what)} was not sent")
        self._channel.send(message)  # first: a message that cannot be encoded leaves no trace
        future = self._loop.create_future()
        self._pending[request_id] = future
        if limit > 0:
            self._deadlines.add(limit, request_id, (what, limit))
        return future

    def _expire(self, request_id: int, detail: tuple[str | tuple[str, str], float]) -> None:
        what, limit = detail
        future = self._pending.pop(request_id, None)
        if future is not None and not future.done():
            self._give_up(request_id)  # first: the answer may start the next call
            future.set_exception(CallTimeout(self._timeout_message(what, limit)))

    def _timeout_message(self, what: str | tuple[str, str], limit: float) -> str:
        """An async operation is cancelled; a sync one cannot be: say so, and the cure."""
        head = f"{self.name}: {_what(what)} took longer than {limit:g}s"
        details = self.ready.details if self.ready is not None else {}
        info = details.get(what[0]) if isinstance(what, tuple) else None
        if info is None or info.is_async:
            return f"{head} and was cancelled"
        return (
            f"{head}; it is a sync operation and still runs in its thread (a thread cannot "
            f"be stopped), and {what[1]} takes no other operation until it returns; "
            "make it async so that a deadline cancels it"
        )

    # -- messages from the child -------------------------------------------------

    def _on_message(self, message: ToKernel) -> None:
        # The hot path first, by exact type: class patterns cost microseconds.
        if type(message) is Result:
            future = self._pending.pop(message.id, None)
            if future is None:
                self._ended(message.id)
            elif not future.done():
                future.set_result(message.value)
            return
        match message:
            case Error(request_id, type_name, text, trace):
                if request_id == 0 and not self._ready.done():
                    error = self._start_error(
                        f"failed to load {self.spec.entrypoint}: {type_name}: {text}"
                    )
                    self._ready.set_exception(error)
                    return
                future = self._pending.pop(request_id, None)
                if future is None:
                    self._ended(request_id)
                elif not future.done():
                    future.set_exception(OperationFailed(type_name, text, trace))
            case Pong(seq):
                pong = self._pongs.pop(seq, None)
                if pong is not None and not pong.done():
                    pong.set_result(None)
            case Log(level, logger, text):
                # The driver's text: escaped, so it cannot forge daemon log lines.
                log.log(
                    level,
                    "%s: %s: %s",
                    self.name,
                    shown(logger),
                    shown(text),
                    extra=slot_fields(self.name, "driver_log"),
                )
            case Event(resource_id, name, data):
                if self._on_event is not None:
                    self._on_event(resource_id, name, data)
            case Hello():
                if not self._hello.done():
                    self._hello.set_result(message)
            case Ready():
                if not self._ready.done():
                    self._ready.set_result(message)

    def _on_violation(self, error: ProtocolError) -> None:
        self._end(f"protocol error: {error}", signal.SIGKILL)

    def _end(self, reason: str, signum: int) -> None:
        """The kernel gives up on the child: remember why and kill it."""
        if self._death is None:
            self._death = reason
            log.warning("%s: %s; killing pid %s", self.name, reason, self.pid)
        if self._child is not None:
            self._child.signal_group(signum)

    # -- the watcher ---------------------------------------------------------------

    async def _watch(self) -> None:
        """Ping the child until it exits, then fail every call in flight."""
        assert self._child is not None
        exited = self._child.exited
        seq = 0
        while not exited.done():
            await asyncio.wait([exited], timeout=self.timeouts.ping_interval_s)
            if exited.done():
                break
            seq += 1
            pong: asyncio.Future[None] = self._loop.create_future()
            self._pongs[seq] = pong
            self._channel.send(Ping(seq))
            await asyncio.wait(
                [pong, exited],  # type: ignore[type-var]  # Future[None] and Future[int]
                timeout=self.timeouts.ping_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            self._pongs.pop(seq, None)
            if not pong.done() and not exited.done():
                self._end(
                    f"hung: no answer to ping within {self.timeouts.ping_timeout_s:g}s",
                    signal.SIGKILL,
                )
                await asyncio.wait([exited], timeout=self.timeouts.kill_s)
        # What the child left in its pipes, not their end-of-file: a
        # descendant holding them must not hold up the recovery.
        await self._child.output_drained(self.timeouts.kill_s)
        self._channel.close()
        self._release_child()
        self._fail_pending(self._exit_error())

    def exit_reason(self) -> str:
        """Why the child ended, for the log and for errors."""
        assert self._child is not None and self._child.exited.done()
        status = describe_exit(self._child.exited.result())
        reason = f"exited ({status})"
        if self._death is not None:
            reason = f"{self._death} ({status})"
        tail = self.stderr_tail()
        verdict = limit_verdict(
            self.spec.rlimits, self._child.exited.result(), self._child.cpu_s, tail
        )
        if verdict:
            reason += f"; {verdict}"
        return reason + (f"; stderr: {shown(tail)}" if tail and not self._stopping else "")

    def _exit_error(self) -> DriverError:
        reason = self.exit_reason()
        if self._death is not None and self._death.startswith("hung"):
            return DriverHung(f"{self.name} {reason}")
        return DriverCrashed(f"{self.name} {reason}")

    def _fail_pending(self, error: DriverError) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        unfinished, self._unfinished = self._unfinished, {}
        for waiter in unfinished.values():  # nothing runs in a dead child
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # -- stop ----------------------------------------------------------------------

    async def discard(self) -> None:
        """End a child that was launched but never started (a spare): closing
        its channel makes it exit quietly; it is killed if it does not."""
        if self._channel is not None:
            self._channel.close()
        try:
            if self._child is not None and not self._child.exited.done():
                await asyncio.wait([self._child.exited], timeout=self.timeouts.kill_s)
        finally:  # cancelled meanwhile too: never leave it unreaped
            await self._kill_and_reap()

    async def wait(self) -> int:
        """Wait until the child has exited and the watcher has failed its calls."""
        assert self._child is not None
        await asyncio.shield(self._child.exited)
        if self._watcher is not None:
            await asyncio.shield(self._watcher)
        return self._child.exited.result()

    async def stop(self, drain: float | None = None) -> int:
        """Drain, then SIGTERM, then SIGKILL; return the exit code, always reaped."""
        assert self._child is not None, "not started"
        self._stopping = True
        exited = self._child.exited
        stages: list[tuple[Callable[[], None], float]] = [
            (
                lambda: self._channel.send(
                    Drain(self.timeouts.drain_s if drain is None else drain)
                ),
                self.timeouts.drain_s if drain is None else drain,
            ),
            (lambda: self._end_quietly(signal.SIGTERM), self.timeouts.term_s),
            (lambda: self._end_quietly(signal.SIGKILL), self.timeouts.kill_s),
        ]
        try:
            for begin, deadline in stages:
                if exited.done():
                    break
                begin()
                await asyncio.wait([exited], timeout=deadline)
        finally:
            await self._kill_and_reap()
        return exited.result()

    def _release_child(self) -> None:
        """Close the kernel's ends of the child's channels (the loop stops
        reading the descriptor channel first) and any descriptor still held."""
        if self._fd_reader >= 0:
            self._loop.remove_reader(self._fd_reader)
            self._fd_reader = -1
        self._fd_inbox.close()
        if self._child is not None:
            self._child.close()

    def _end_quietly(self, signum: int) -> None:
        log.info("%s: sending %s to pid %s", self.name, signal.Signals(signum).name, self.pid)
        if self._child is not None:
            self._child.signal_group(signum)

    async def _kill_and_reap(self) -> None:
        """SIGKILL if still alive and wait for the reaping, whatever happens."""
        child = self._child
        if child is None:
            return
        if not child.exited.done():
            child.signal_group(signal.SIGKILL)
        waits: list[asyncio.Future[Any]] = [child.exited]  # the watcher too, once it exists
        if self._watcher is not None:
            waits.append(self._watcher)
        try:
            # Cancelled while reaping: finish reaping, then let the cancel through.
            cancelled = await wait_out_cancels(waits, timeout=self.timeouts.kill_s * 4)
        finally:
            if self._channel is not None:
                self._channel.close()
            self._deadlines.close()
            self._release_child()
        if cancelled:
            raise asyncio.CancelledError


def limit_verdict(rlimits: Mapping[str, int], returncode: int, cpu_s: float, tail: str) -> str:
    """Which limit ended the child, if one did: ``exceeded CPU limit 3 s`` or
    ``exceeded memory limit 512 MiB``, else ``""``. The CPU limit's soft
    value sends SIGXCPU, its hard value (a little higher, for a driver that
    ignores SIGXCPU) SIGKILL."""
    cpu = rlimits.get("cpu")
    if cpu and (returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and cpu_s >= cpu)):
        return f"exceeded CPU limit {cpu} s"
    memory = rlimits.get("as")
    if memory and "MemoryError" in tail:
        return f"exceeded memory limit {memory // (1024 * 1024)} MiB"
    return ""


def _what(what: str | tuple[str, str]) -> str:
    """A request's description; calls carry (op, resource) and format it only when needed."""
    return what if isinstance(what, str) else f"{what[0]} on {what[1]}"


def _spawn_failure(name: str, python: object, exc: OSError) -> str:
    """Why a child could not be spawned, blaming the right party: when the
    daemon is out of descriptors (or the host of processes or memory), the
    interpreter is not at fault."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return (
            f"{name}: drivebayd has no descriptor left to start it ({exc.strerror}); "
            "raise LimitNOFILE (the hard RLIMIT_NOFILE) or run fewer drivers"
        )
    if exc.errno in (errno.EAGAIN, errno.ENOMEM):
        return (
            f"{name}: the host refused a new process ({exc.strerror}); check the memory "
            "and the process limits of drivebayd's user"
        )
    return f"{name}: cannot run {python}: {exc.strerror or exc}"
