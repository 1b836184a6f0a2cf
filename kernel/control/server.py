"""The control socket: drivebayctl's (and any program's) way into the daemon.

A Unix socket created mode 0600 (0660 with ``socket_group``, 0666 when
``authorization`` names others) in the state dir, speaking the same framed
msgspec protocol as the drivers. Each connection learns its peer's role from
its credentials (SO_PEERCRED) once, by the policy of ``authz.py`` (for a peer
other than root and the daemon's user, in a worker thread: ``peers.py``;
nothing is read from it meanwhile): a peer no rule names gets one refusal
reply; each request is checked against that role (a refusal is answered
``permission denied: COMMAND needs ROLE`` and audited).
Requests on a connection run concurrently, each in a task the
connection owns and cancels when the client goes away. What clients may hold
(connections, bytes of requests being received, time to send one) is bounded
as ``kernel/control/limits.py`` says; a client over a bound gets one line and
is disconnected.

Every request that changes something (but ``call``, the hot path, whose
volume would flush the event ring) is audited when it ends: who (the peer's
uid and pid), what (the command and its fields; property values left out)
and how it ended, in the log and the event stream (``EventLog.audit``).
A stream (``tail -f``, ``events -f``) sends no faster than its client reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivebay.kernel.control import schema
from drivebay.kernel.control.authz import (
    PermissionDenied,
    Principal,
    Role,
    authorize,
    owner,
    peer_credentials,
    refusal,
    socket_mode,
)
from drivebay.kernel.control.handlers import HANDLERS, STREAMS, CallFailed, submit_call
from drivebay.kernel.control.limits import MIB, ConnectionGate, RequestBudget, stalled, wanted
from drivebay.kernel.control.peers import slow_lookup
from drivebay.kernel.control.scope import chunk_shown, screened, shown
from drivebay.kernel.drivers.channel import FramedChannel
from drivebay.kernel.events import AUDITED, audit_what
from drivebay.protocol.codec import MessageCodec
from drivebay.protocol.control import RawRequest, Reply
from drivebay.protocol.control_codes import EXIT_FAILURE, EXIT_USAGE
from drivebay.protocol.errors import (
    DrivebayError,
    KernelError,
    NoSuchName,
    NotRunning,
    OperationFailed,
    ProtocolError,
    RequestError,
)

if TYPE_CHECKING:
    from drivebay.kernel.kernel import Kernel

log = logging.getLogger("drivebay.control")

LINGER_S = 1.0  # a refused client has this long to read why, and close
LINGER_MAX = 64  # refused connections kept that long at once; more close at once


def error_reply(request_id: int, command: str, exc: BaseException) -> Reply:
    """The reply to a request that failed with ``exc``.

    A drivebay error is the client's (a bad request, an unknown name) or the
    driver's (an operation that raised, timed out, crashed): its line and
    exit code, named by its type. Anything else is a bug in the daemon: logged
    with its traceback, answered ``internal error``, exit 1.
    """
    if isinstance(exc, CallFailed):
        cause = exc.error
        trace = cause.traceback if isinstance(cause, OperationFailed) else ""
        return Reply(
            request_id,
            False,
            error=str(exc),
            code=exc.exit_code,
            error_type=type(cause).__name__,
            traceback=trace,
        )
    if isinstance(exc, RequestError):
        return Reply(request_id, False, error=str(exc), code=exc.exit_code, error_type=_name(exc))
    if isinstance(exc, DrivebayError):
        return Reply(request_id, False, error=str(exc), code=EXIT_FAILURE, error_type=_name(exc))
    log.error("control command %s failed inside the daemon", command, exc_info=exc)
    return Reply(
        request_id,
        False,
        error=f"internal error (a bug; see the daemon log): {exc!r}",
        code=EXIT_FAILURE,
        error_type=KernelError.__name__,
    )


def _name(exc: DrivebayError) -> str:
    """The drivebay error's name (a malformed request is a ``RequestError``,
    an unknown driver a ``NoSuchName`` as an unknown resource is)."""
    if isinstance(exc, schema.BadRequest):
        return RequestError.__name__
    if isinstance(exc, NoSuchName):
        return NoSuchName.__name__
    return type(exc).__name__


@dataclass
class ServerLimits:
    """The bounds all connections of one server share."""

    gate: ConnectionGate
    budget: RequestBudget
    refused: int = 0  # connections refused since the gate last admitted one
    lingering: int = 0  # refused connections waiting for their client to read why


class ControlChannel(FramedChannel[RawRequest]):
    """A connection's channel that reports each read, leaves a protocol
    violation to its connection to close, goes deaf and mute once the
    connection refused its client, and stops reading from a client while it
    does not read its replies (they would pile up here)."""

    def __init__(
        self,
        connection: ControlConnection,
        codec: MessageCodec[RawRequest],
        on_read: Callable[[], None],
    ) -> None:
        super().__init__(
            codec,
            connection.dispatch,
            connection.violation,
            connection.made,
            connection.lost,
        )
        self._on_read = on_read
        self.discarding = False  # refused: what the client still sends is dropped

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        try:
            messages = self.codec.feed(data)
        except ProtocolError as exc:
            self._on_violation(exc)  # the connection refuses the client
            return
        for message in messages:
            self._on_message(message)
        if not self.closing:
            self._on_read()

    def send(self, message: object) -> None:
        if not self.discarding:  # the refusal was the last word
            super().send(message)

    def pause_writing(self) -> None:
        super().pause_writing()
        if not self.closing:
            assert self.transport is not None
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if not self.closing:
            assert self.transport is not None
            self.transport.resume_reading()


class ControlConnection:
    """One client: its requests run concurrently, in tasks it owns.

    When the client goes away, only what nobody else needs stops: its
    streams (``tail -f``) and its queued calls. A command that changes
    something (``resource add``, ``stop``, ...) runs to its end, so that
    memory, the drivers and the state store stay in step; its reply is
    dropped.
    """

    def __init__(self, kernel: Kernel, limits: ServerLimits) -> None:
        self._kernel = kernel
        self._limits = limits
        self._admitted = False  # counted by the gate
        self._held = 0  # bytes the request being received reserved in the budget
        self._deadline: asyncio.TimerHandle | None = None  # for the request being received
        self._progress = False  # a request completed since the last read
        self._lingering = False  # refused, waiting for the client to close
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: set[asyncio.Task[None]] = set()  # the tasks a disconnect ends
        self._calls: set[asyncio.Future[Any]] = set()
        self._who = "unknown peer"  # its uid and pid, for the audit
        self._principal = Principal(self._who, None)  # its role, known once connected
        self._waiting: list[RawRequest] | None = None  # requests read while it is looked up
        max_frame = kernel.config.max_frame_bytes
        codec: MessageCodec[RawRequest] = MessageCodec(RawRequest, "control client", max_frame)
        self.channel = ControlChannel(self, codec, self._after_read)

    def made(self, transport: asyncio.Transport) -> None:
        limits = self._limits
        if not limits.gate.enter():
            if limits.refused == 0:
                log.warning("control connections at the limit: %s", limits.gate.refusal)
            limits.refused += 1
            self._refuse(limits.gate.refusal)
            return
        self._admitted = True
        if limits.refused:
            log.info("accepting control connections again (%d refused)", limits.refused)
            limits.refused = 0
        pid, uid, gid = peer_credentials(transport.get_extra_info("socket"))
        self._who = f"pid {pid} uid {uid}"
        if owner(uid):  # root or the daemon's user: no lookup
            self._principal = Principal(self._who, Role.admin)
            return
        # Its role needs the user and group database (NSS may block): looked
        # up off the loop. Until it is known the client is not read from, and
        # what was read already waits (a few requests: reading stops at once).
        self._waiting = []
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._identify(transport, uid, gid))
        self._streams.add(task)  # a disconnect cancels it
        task.add_done_callback(self._streams.discard)

    async def _identify(self, transport: asyncio.Transport, uid: int, gid: int) -> None:
        peers = self._kernel.peers
        try:
            role = await peers.role(uid, gid, self._kernel.config)
        except TimeoutError:
            line = slow_lookup(uid, peers.timeout_s)
            log.warning("refused control connection from %s: %s", self._who, line)
            self._refuse(line)
        else:
            self._principal = principal = Principal(self._who, role)
            if principal.role is None:
                log.warning("refused control connection from %s", principal.who)
                self._kernel.events.audit(principal.who, "connect", "refused: no rule names it")
                self._refuse(refusal(principal))
        waiting, self._waiting = self._waiting or [], None
        if not self.channel.discarding:  # served: what it sent meanwhile, in order
            for request in waiting:
                self.dispatch(request)
        if not self.channel.closing:  # refused: what it still sends is dropped
            transport.resume_reading()

    def _refuse(self, line: str, code: int = EXIT_FAILURE) -> None:
        """Say why in one line, and close.

        Closing at once, with the client's request unread, would make its
        write fail and its read report a reset, and many clients would never
        see the line. So the daemon ends its side, drops what the client
        still sends, and closes when the client does, or after LINGER_S
        (at once beyond LINGER_MAX such connections).
        """
        self._send(Reply(0, False, error=line, code=code))
        self._end_deadline()
        channel, limits = self.channel, self._limits
        channel.discarding = True
        self._abandon()
        transport = channel.transport
        if transport is None or limits.lingering >= LINGER_MAX or not transport.can_write_eof():
            channel.close()
            return
        channel.outbox.flush()  # the refusal, before the end of what we write
        transport.write_eof()
        limits.lingering += 1
        self._lingering = True
        self._deadline = asyncio.get_running_loop().call_later(LINGER_S, channel.close)

    def _after_read(self) -> None:
        """Bound what the request being received holds: its size, from its
        length prefix, against the shared budget; its time against
        ``timeouts.request_s``."""
        codec = self.channel.codec
        if not self._reserve(codec.announced):
            return
        if codec.pending == 0:
            self._end_deadline()
        elif self._progress or self._deadline is None:  # a new request began
            self._end_deadline()
            request_s = self._kernel.config.timeouts.request_s
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(request_s, self._stalled, request_s)
        self._progress = False

    def _reserve(self, announced: int) -> bool:
        need = wanted(announced)
        if need == self._held:
            return True
        budget = self._limits.budget
        budget.give(self._held)
        self._held = 0
        if need and not budget.take(need):
            log.warning("control request refused: %s", budget.refusal(need))
            self._refuse(budget.refusal(need))
            return False
        self._held = need
        return True

    def _stalled(self, request_s: float) -> None:
        self._deadline = None
        log.info("closing a control connection: %s", stalled(request_s))
        self._refuse(stalled(request_s))

    def _end_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def violation(self, error: ProtocolError) -> None:
        """Garbage, or a request over ``max_frame_bytes`` (from its prefix)."""
        self._refuse(str(error), EXIT_USAGE)

    def dispatch(self, request: RawRequest) -> None:
        self._progress = True
        if self._waiting is not None:  # the peer's role is being looked up
            self._waiting.append(request)
            return
        try:
            typed = schema.decode_request(request.command, request.args)
        except schema.BadRequest as exc:
            self._send(error_reply(request.id, request.command, exc))
            return
        try:
            authorize(self._kernel, self._principal, typed)
        except PermissionDenied as exc:
            self._send(error_reply(request.id, request.command, exc))
            self._kernel.events.audit(self._who, audit_what(typed), f"refused: {exc}")
            return
        if self._kernel.stopping and type(typed) in schema.CHANGING:
            stopping = NotRunning("drivebayd is stopping; retry once it has started again")
            self._send(error_reply(request.id, request.command, stopping))
            self._audit(typed, f"refused: {stopping}")
            return
        if type(typed) is schema.CallRequest:
            self._call(request.id, typed)
            return
        task = asyncio.get_running_loop().create_task(self._serve(request.id, typed))
        tasks = self._streams if type(typed) in STREAMS else self._tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _call(self, request_id: int, request: schema.CallRequest) -> None:
        """The hot path: queue on the actor, reply when its future is done."""
        try:
            future = submit_call(self._kernel, request)
        except Exception as exc:
            self._send(error_reply(request_id, "call", exc))
            return
        self._calls.add(future)
        future.add_done_callback(functools.partial(self._call_done, request_id))

    def _call_done(self, request_id: int, future: asyncio.Future[Any]) -> None:
        self._calls.discard(future)
        if future.cancelled():
            return  # the client went away
        exc = future.exception()
        if exc is None:
            self._send(Reply(request_id, True, future.result()))
            return
        if isinstance(exc, DrivebayError) and not isinstance(exc, NoSuchName):
            exc = CallFailed(exc)  # an unknown resource (a cluster's, found late) stays exit 4
        self._send(error_reply(request_id, "call", exc))

    def lost(self) -> None:
        self._end_deadline()
        if self._lingering:
            self._lingering = False
            self._limits.lingering -= 1
        self._limits.budget.give(self._held)
        self._held = 0
        if self._admitted:
            self._admitted = False
            self._limits.gate.leave()
        self._abandon()

    def _abandon(self) -> None:
        """Nobody will read what the queued calls and the streams would send."""
        for future in list(self._calls):
            future.cancel()  # the actor skips operations nobody waits for
        for task in list(self._streams):
            task.cancel()

    def _send(self, reply: Reply) -> None:
        self.channel.send(reply)

    async def _serve(self, request_id: int, request: schema.ControlRequest) -> None:
        kind = type(request)
        try:
            stream = STREAMS.get(kind)
            if stream is not None:
                outbox = self.channel.outbox
                async for chunk in stream(self._kernel, request):
                    if not chunk_shown(self._principal, request, chunk):
                        continue
                    if outbox.full:  # the client reads slowly: wait (its end cancels us)
                        await outbox.wait_writable()
                    self._send(Reply(request_id, True, chunk, more=True))
                self._send(Reply(request_id, True))
                return
            result, code = await HANDLERS[kind](self._kernel, request)
            result, code = shown(self._principal, request, result, code)
            self._send(Reply(request_id, True, result, code=code))
            self._audit(request, "ok" if code == 0 else f"exit {code}")
        except Exception as exc:
            command = str(kind.__struct_config__.tag)
            reply = error_reply(request_id, command, screened(self._principal, exc))
            self._send(reply)
            self._audit(request, f"failed: {reply.error.splitlines()[0] if reply.error else ''}")

    def _audit(self, request: schema.ControlRequest, outcome: str) -> None:
        if type(request) in AUDITED:
            self._kernel.events.audit(self._who, audit_what(request), outcome)


@contextlib.asynccontextmanager
async def serve_control(kernel: Kernel) -> AsyncIterator[None]:
    """Listen on the control socket for as long as the context lasts."""
    path = kernel.config.socket_path
    _clear_stale_socket(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    limits = server_limits(kernel)
    mode = socket_mode(kernel.config)
    old_umask = os.umask(0o777 & ~mode)  # the socket is born with its final mode
    try:
        server = await loop.create_unix_server(
            lambda: ControlConnection(kernel, limits).channel, str(path)
        )
    finally:
        os.umask(old_umask)
    if kernel.config.socket_group:
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(path, -1, grp.getgrnam(kernel.config.socket_group).gr_gid)
    log.info("control socket: %s", path)
    try:
        yield
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


def server_limits(kernel: Kernel) -> ServerLimits:
    """The bounds of the control server: the kernel's one cap on client
    connections (shared with the HTTP API), and its request budget."""
    control = kernel.config.control
    return ServerLimits(kernel.connections, RequestBudget(control.request_buffer_mb * MIB))


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a dead daemon; refuse to remove anything else."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise KernelError(
            f"{path} exists and is not a socket; remove it or choose another --socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: stale
        return
    finally:
        probe.close()
    raise KernelError(f"a daemon already listens on {path}; stop it or choose another --socket")
