"""The driver runtime: the program every driver child runs.

Started by the kernel as ``python -I -c <bootstrap>`` with the channel socket
inherited as fd ``DRIVEBAY_CHANNEL_FD`` and stdout/stderr already sent to the
driver's logs. The bootstrap has already tied the child's life to the kernel
and put it in a PID namespace of its own (``init_shim.start``). Before any
driver code is imported it applies its limits and says ``Hello``; then it
loads the driver class, says ``Ready`` and serves requests until ``Drain`` or
until the channel closes.

One driver instance per attached resource. Async operations run on the loop;
sync ones in a worker thread so that pings are answered while they run. An
exception in an operation becomes an ``error`` reply, never a dead process.
Standard library only (msgspec is used through ``child_codec`` when present).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import inspect
import logging
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, cast

from .child_codec import ChildCodec
from .child_messages import (
    CALL_EPOCH,
    CALL_OP_ID,
    already_attached,
    cancelled,
    draining,
    error_reply,
    event_message,
    hello_message,
    log_message,
    no_reconcile,
    not_attached,
    op_id_given,
    pong_message,
    ready_message,
    result_message,
    result_too_large,
    sendable,
    unencodable_result,
    unknown_operation,
)
from .errors import ProtocolError
from .fd_passing import FdInbox, drain
from .handoff_serving import HandoffServing
from .hooks import LIFECYCLE_METHODS, check_hooks
from .outbox import Outbox
from .versions import PROTOCOL_MAX, PROTOCOL_MIN

EXIT_REFUSED = 2
EXIT_LOAD_FAILED = 3
EXIT_PROTOCOL = 4
CPU_GRACE_S = 2  # hard RLIMIT_CPU = the limit + this

log = logging.getLogger("drivebay.runtime")


class Settings:
    """What the kernel told the child through its environment."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.channel_fd = int(environ["DRIVEBAY_CHANNEL_FD"])
        self.fd_channel_fd = int(environ.get("DRIVEBAY_FD_CHANNEL_FD", "-1"))
        self.entrypoint = environ["DRIVEBAY_ENTRYPOINT"]
        self.src = environ.get("DRIVEBAY_SRC", "")
        self.driver = environ.get("DRIVEBAY_DRIVER", "driver")
        self.version = environ.get("DRIVEBAY_VERSION", "0")
        self.max_frame = int(environ.get("DRIVEBAY_MAX_FRAME", str(16 * 1024 * 1024)))
        self.log_level = environ.get("DRIVEBAY_LOG_LEVEL", "INFO")
        self.limits = environ.get("DRIVEBAY_RLIMITS", "")
        self.containment = environ.get("DRIVEBAY_CONTAINMENT", "auto")
        self.scheduling = environ.get("DRIVEBAY_SCHEDULING", "normal")


class ChannelLogHandler(logging.Handler):
    """Sends the driver's log records to the kernel as ``log`` messages."""

    def __init__(self, outbox: Outbox, codec: ChildCodec, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._outbox = outbox
        self._codec = codec
        self._loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = log_message(record.levelno, record.name, self.format(record))
            frame = self._codec.encode(message)
            if self._in_loop_thread():
                self._outbox.send(frame)
            else:
                self._outbox.send_threadsafe(frame)
        except Exception:  # logging must never take the driver down
            self.handleError(record)

    def _in_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False


class Operations:
    """The driver class's operations, resolved once: name -> is it a coroutine."""

    def __init__(self, driver_class: type) -> None:
        self.driver_class = driver_class
        self.is_async: dict[str, bool] = {}
        for name, member in inspect.getmembers(driver_class):
            if name.startswith("_") or name in LIFECYCLE_METHODS or not callable(member):
                continue
            if inspect.isclass(member):  # a nested class is not an operation
                continue
            if isinstance(inspect.getattr_static(driver_class, name), (classmethod, staticmethod)):
                continue
            self.is_async[name] = inspect.iscoroutinefunction(member)
        self.has_health = callable(getattr(driver_class, "health", None))
        # Raises HookMisdefined for a reserved name used with another meaning.
        self.hooks = check_hooks(driver_class)
        # Those that declare ``op_id``: it is passed to them (once per class, here).
        self.takes_op_id = frozenset(
            name for name in self.is_async if _declares(getattr(driver_class, name), "op_id")
        )
        # What ``describe`` shows of each: [signature, summary, is_async, takes_op_id].
        self.details = {
            name: [*_described(getattr(driver_class, name)), is_async, name in self.takes_op_id]
            for name, is_async in self.is_async.items()
        }
        # A driver that wants to raise events names an ``emit`` parameter; one
        # that wants the epoch its calls are sent under, ``call_epoch``.
        self.takes_emit = _declares(driver_class, "emit")
        self.takes_call_epoch = _declares(driver_class, "call_epoch")


def _declares(function: Any, name: str) -> bool:
    """Does ``function`` take a keyword parameter ``name``?"""
    try:
        parameter = inspect.signature(function).parameters.get(name)
    except (TypeError, ValueError):
        return False
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return parameter is not None and parameter.kind in keyword


DESCRIBED_MAX = 200  # characters of a signature or summary sent in Ready


class _Shown(str):
    """An annotation written as a string (``from __future__ import annotations``),
    shown without quotes: ``size: int``, not ``size: 'int'``."""

    def __repr__(self) -> str:
        return str(self)


def _described(member: Any) -> tuple[str, str]:
    """``member``'s signature without ``self``, and its docstring's first line;
    ``(...)`` for what ``inspect`` cannot read (describing never fails a load)."""
    try:
        signature = inspect.signature(member)
        parameters = list(signature.parameters.values())
        if inspect.isfunction(member) and parameters:
            parameters = parameters[1:]  # self
        signature = signature.replace(
            parameters=[_unquoted(p) for p in parameters],
            return_annotation=_shown(signature.return_annotation),
        )
        text = str(signature)
    except Exception:  # a builtin, a broken __signature__, an odd default's repr
        text = "(...)"
    try:
        summary = (inspect.getdoc(member) or "").strip().split("\n")[0].strip()
    except Exception:
        summary = ""
    return _cut(text), _cut(summary)


def _unquoted(parameter: inspect.Parameter) -> inspect.Parameter:
    return parameter.replace(annotation=_shown(parameter.annotation))


def _shown(annotation: Any) -> Any:
    return _Shown(annotation) if isinstance(annotation, str) else annotation


def _cut(text: str) -> str:
    return sendable(text if len(text) <= DESCRIBED_MAX else text[: DESCRIBED_MAX - 1] + "…")


class DriverServer(HandoffServing, asyncio.Protocol):
    """Serves the kernel's requests on the channel."""

    def __init__(
        self,
        codec: ChildCodec,
        outbox: Outbox,
        operations: Operations,
        pool: concurrent.futures.Executor,
        done: asyncio.Future[int],
        fd_channel: socket.socket | None = None,
    ) -> None:
        self._codec = codec
        self._out = outbox
        self._ops = operations
        self._pool = pool
        self._done = done
        self._loop = asyncio.get_running_loop()
        self._instances: dict[str, Any] = {}
        self._running: dict[int, asyncio.Future[Any]] = {}
        # Sync calls by request id: a thread cannot be stopped, so a Cancel for
        # one that has started is answered when it returns (see _cancel).
        self._threads: dict[int, concurrent.futures.Future[Any]] = {}
        self._thread_resources: dict[int, str] = {}  # ... and the resource each is for
        self._given_up: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # attach, detach, drain: ours to cancel
        self._draining = False
        self._loop_thread = threading.get_ident()
        self._fd_channel = fd_channel
        self._fd_inbox = FdInbox()
        self._set_aside: dict[str, Any] = {}
        self._handing: dict[str, asyncio.Future[Any]] = {}
        self._epochs: dict[str, int] = {}  # resource id -> its last call's epoch (call_epoch)

    # -- channel events ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._out.attach(transport)

    def pause_writing(self) -> None:
        self._out.pause_writing()

    def resume_writing(self) -> None:
        self._out.resume_writing()

    def _send(self, message: list[Any]) -> None:
        self._out.send(self._codec.encode(message))

    def _out_frame(self, frame: bytes) -> None:
        self._out.send(frame)

    def drain_fds(self) -> None:
        """The loop's reader of the descriptor channel (see ``fd_passing``)."""
        if self._fd_channel is not None and not drain(self._fd_channel, self._fd_inbox):
            self._loop.remove_reader(self._fd_channel.fileno())

    def _send_result(self, request_id: int, value: Any) -> None:
        """The reply to a request, or an error saying its value cannot travel."""
        try:
            frame = self._codec.encode(result_message(request_id, value))
            if len(frame) - 4 > self._codec.max_frame:  # the kernel would end the channel
                self._send(result_too_large(request_id, len(frame) - 4, self._codec.max_frame))
                return
        except Exception as exc:  # a driver returned something the wire cannot carry
            self._send(unencodable_result(request_id, value, exc))
            return
        self._out.send(frame)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._codec.feed(data)
        except ProtocolError as exc:
            print(f"drivebay runtime: {exc}", file=sys.stderr)
            self._finish(EXIT_PROTOCOL)
            return
        for message in messages:
            self._dispatch(message)

    def connection_lost(self, exc: Exception | None) -> None:
        # The kernel is gone or closed the channel: nothing more to serve.
        self._finish(0 if self._draining else 1)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_all(self) -> None:
        """At exit: stop whatever still runs on the loop."""
        for future in [*self._tasks, *self._running.values()]:
            future.cancel()

    def emit(self, resource_id: str, name: str, data: Any = None) -> None:
        """What a driver instance calls as ``emit(name, data)``; from any thread."""
        frame = self._codec.encode(event_message(resource_id, name, data))
        if len(frame) - 4 > self._codec.max_frame:
            raise ValueError(
                f"event {name!r} takes {len(frame) - 4} bytes, over the channel's limit of "
                f"{self._codec.max_frame}; send less"
            )
        if threading.get_ident() == self._loop_thread:
            self._out.send(frame)
        else:
            self._out.send_threadsafe(frame)

    def _finish(self, code: int) -> None:
        if not self._done.done():
            self._done.set_result(code)

    # -- requests ----------------------------------------------------------------

    def _dispatch(self, message: list[Any]) -> None:
        # Plain tag tests and indexing: structural pattern matching with class
        # patterns cost ~7 us per call here, most of a hot call's budget.
        tag = message[0]
        try:
            if tag == "call":
                request_id, resource_id, op, args = message[1], message[2], message[3], message[4]
                if type(args) is not dict or type(op) is not str:
                    raise TypeError("call needs op: str and args: dict")
                self._call(request_id, resource_id, op, args, message)
            elif tag == "ping":
                self._send(pong_message(message[1]))
            elif tag == "cancel":
                self._cancel(message[1])
            elif tag == "attach":
                self._attach(message[1], message[2], dict(message[3]))
            elif tag == "detach":
                self._detach(message[1], message[2])
            elif tag == "health":
                self._health(message[1])
            elif tag == "drain":
                self._spawn(self._drain(float(message[1])))
            elif tag == "handoff":
                self._handoff(message[1], message[2])
            elif tag == "takeover":
                self._takeover(
                    message[1],
                    message[2],
                    dict(message[3]),
                    message[4],
                    list(message[5]),
                    str(message[6]),
                )
            elif tag == "reconcile":
                epoch = message[6] if len(message) > 6 else 0
                args = dict(message[5])
                self._reconcile(message[1], message[2], str(message[3]), message[4], args, epoch)
            elif tag == "handoff_end":
                self._handoff_end(message[1], message[2], bool(message[3]))
            else:
                log.warning("ignoring unknown message %r from the kernel", tag)
        except (IndexError, TypeError, ValueError) as exc:
            log.error("ignoring malformed %r message from the kernel: %s", tag, exc)

    def _call(
        self, request_id: int, resource_id: str, op: str, args: dict[str, Any], message: list[Any]
    ) -> None:
        if self._draining:
            self._send(draining(request_id))
            return
        instance = self._instances.get(resource_id)
        is_async = self._ops.is_async.get(op)
        if instance is None:
            self._send(not_attached(request_id, resource_id))
        elif is_async is None:
            self._send(unknown_operation(request_id, op, self._ops.is_async))
        else:
            if op in self._ops.takes_op_id:
                if "op_id" in args:
                    self._send(op_id_given(request_id, op))
                    return
                args = {**args, "op_id": _field(message, CALL_OP_ID, "")}
            if self._ops.takes_call_epoch:
                self._epochs[resource_id] = _field(message, CALL_EPOCH, 0)
            method = getattr(instance, op)
            self._run(request_id, method, args, is_async, resource_id)

    def _reconcile(
        self,
        request_id: int,
        resource_id: str,
        op_id: str,
        operation: str,
        args: dict[str, Any],
        epoch: int,
    ) -> None:
        """The kernel asks what became of ``op_id``: the instance's
        ``reconcile_operation(op_id, operation, args)`` answers, as a call."""
        instance = self._instances.get(resource_id)
        hook = getattr(instance, "reconcile_operation", None)
        if self._draining:
            self._send(draining(request_id))
        elif instance is None:
            self._send(not_attached(request_id, resource_id))
        elif hook is None:
            self._send(no_reconcile(request_id, operation))
        else:
            if self._ops.takes_call_epoch:
                self._epochs[resource_id] = epoch
            settle = functools.partial(hook, op_id, operation, args)
            self._run(request_id, settle, {}, inspect.iscoroutinefunction(hook), resource_id)

    def call_epoch(self, resource_id: str) -> int:
        """The epoch of the call last sent for ``resource_id`` (0: none under
        a cluster): what a driver instance calls as ``call_epoch()``."""
        return self._epochs.get(resource_id, 0)

    def _run(
        self,
        request_id: int,
        function: Callable[..., Any],
        args: dict[str, Any],
        is_async: bool,
        resource_id: str = "",
    ) -> None:
        """Run an operation; reply when it ends. Async on the loop, sync in a thread."""
        if is_async:
            try:
                coro: Coroutine[Any, Any, Any] = function(**args)
            except Exception as exc:  # bad arguments for the signature
                self._send(error_reply(request_id, exc))
                return
            # One task per call, which replies itself (no done-callback pass);
            # started eagerly where the loop allows it (Python >= 3.12).
            task = _start_task(self._loop, self._serve(request_id, coro))
            if not task.done():
                self._running[request_id] = task
            return
        work = self._pool.submit(functools.partial(function, **args))
        future = asyncio.wrap_future(work, loop=self._loop)
        self._threads[request_id] = work
        if resource_id:
            self._thread_resources[request_id] = resource_id
        self._running[request_id] = future
        future.add_done_callback(functools.partial(self._reply, request_id))

    def _cancel(self, request_id: int) -> None:
        """The kernel gives up on a call. An async one is cancelled and answers
        when its coroutine has ended; a sync one not started yet never starts;
        a sync one already running in its thread cannot be stopped, and is
        answered "Cancelled" only when it returns: until then the kernel sends
        nothing else for its resource, so no two operations overlap."""
        running = self._running.get(request_id)
        if running is None:
            return
        work = self._threads.get(request_id)
        if work is not None and not work.cancel():
            self._given_up.add(request_id)
            return
        running.cancel()

    async def _serve(self, request_id: int, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            result = await coro
        except asyncio.CancelledError:
            self._send(cancelled(request_id))
        except Exception as exc:
            self._send(error_reply(request_id, exc))
        else:
            self._send_result(request_id, result)
        finally:
            self._running.pop(request_id, None)

    def _reply(self, request_id: int, future: asyncio.Future[Any]) -> None:
        self._running.pop(request_id, None)
        self._threads.pop(request_id, None)
        self._thread_resources.pop(request_id, None)
        if future.cancelled():
            self._send(cancelled(request_id))
            return
        if request_id in self._given_up:
            self._given_up.discard(request_id)
            self._send(
                cancelled(request_id, "cancelled by the kernel; it ran to its end in its thread")
            )
            return
        exc = future.exception()
        if exc is not None:
            self._send(error_reply(request_id, exc))
        else:
            self._send_result(request_id, future.result())

    def _attach(self, request_id: int, resource_id: str, properties: dict[str, Any]) -> None:
        if resource_id in self._instances:
            self._send(already_attached(request_id, resource_id))
            return
        # Tracked like a call, so the kernel's Cancel (after its deadline) stops
        # it and a late finish cannot leave an instance the kernel gave up on.
        task = self._loop.create_task(self._attach_instance(request_id, resource_id, properties))
        self._running[request_id] = task
        task.add_done_callback(lambda _: self._running.pop(request_id, None))

    async def _attach_instance(
        self, request_id: int, resource_id: str, properties: dict[str, Any]
    ) -> None:
        try:
            instance = self._new_instance(resource_id, properties)
            attach = getattr(instance, "attach", None)
            if attach is not None:
                await self._maybe_in_thread(attach, to_the_end=True)
        except asyncio.CancelledError:
            self._send(cancelled(request_id, "attach cancelled by the kernel"))
            return
        except Exception as exc:
            self._send(error_reply(request_id, exc))
            return
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # The kernel gave up on this attach, and the driver finished it
            # anyway (it swallowed the cancellation): nobody will detach an
            # instance the kernel does not know of, so do it here.
            await self._detach_instance(request_id, instance, "attach cancelled by the kernel")
            return
        self._instances[resource_id] = instance
        self._send(result_message(request_id, None))

    def _new_instance(self, resource_id: str, properties: dict[str, Any]) -> Any:
        extra: dict[str, Any] = {}
        if self._ops.takes_emit:
            extra["emit"] = functools.partial(self.emit, resource_id)
        if self._ops.takes_call_epoch:
            self._epochs.pop(resource_id, None)
            extra["call_epoch"] = functools.partial(self.call_epoch, resource_id)
        return self._ops.driver_class(resource_id, properties, **extra)

    def _detach(self, request_id: int, resource_id: str) -> None:
        instance = self._instances.pop(resource_id, None)
        if instance is None:
            self._send(result_message(request_id, None))  # detaching is idempotent
            return
        self._spawn(self._detach_instance(request_id, instance))

    async def _detach_instance(
        self, request_id: int, instance: Any, given_up: str | None = None
    ) -> None:
        """Detach ``instance``; answer with its result, or with "Cancelled"
        and ``given_up`` as the message when it is an attach given up on."""
        try:
            detach = getattr(instance, "detach", None)
            if detach is not None:
                await self._maybe_in_thread(detach)
        except Exception as exc:
            self._send(error_reply(request_id, exc))
            return
        if given_up is not None:
            self._send(cancelled(request_id, given_up))
            return
        self._send(result_message(request_id, None))

    def _health(self, request_id: int) -> None:
        health = getattr(self._ops.driver_class, "health", None)
        if health is None:
            self._send(result_message(request_id, {"ok": True}))
            return
        self._run(request_id, health, {}, inspect.iscoroutinefunction(health))

    async def _maybe_in_thread(self, function: Callable[[], Any], to_the_end: bool = False) -> Any:
        """Await ``function``, in a worker thread when it is sync. A thread
        cannot be stopped: with ``to_the_end``, a cancellation waits for it
        to return (the caller then sees ``cancelling()`` and undoes it)."""
        if inspect.iscoroutinefunction(function):
            return await function()
        work = self._loop.run_in_executor(self._pool, function)
        if not to_the_end:
            return await work
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            return await work

    async def _drain(self, timeout_s: float) -> None:
        """Let in-flight calls end, detach every instance, then exit 0."""
        self._draining = True
        # The kernel escalates to SIGTERM when timeout_s has passed: half of it
        # for the calls in flight, the rest (less a margin) for the detaches.
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s * 0.9 if timeout_s else None

        def left() -> float | None:
            return None if end is None else max(0.0, end - loop.time())

        running = dict(self._running)
        if running:
            calls_s = timeout_s / 2 if timeout_s else None
            _, pending = await asyncio.wait(running.values(), timeout=calls_s)
            for request_id, future in running.items():
                if future in pending:
                    self._cancel(request_id)  # a sync one runs on in its thread
        # A resource whose sync operation still runs is not detached beside it:
        # the process exits without waiting for that thread.
        busy = set(self._thread_resources.values())
        # An instance set aside by a handoff the kernel has not ended is
        # detached too: it still holds its sockets.
        leaving = [*self._instances.items(), *self._set_aside.items()]
        self._instances.clear()
        self._set_aside.clear()
        for resource_id, instance in leaving:
            if resource_id in busy:
                log.warning("%s runs a sync operation still; exit without detach", resource_id)
                continue
            detach = getattr(instance, "detach", None)
            if detach is not None:
                try:
                    await asyncio.wait_for(self._maybe_in_thread(detach), left())
                except Exception:
                    log.exception("detach of %s failed while draining", resource_id)
        self._finish(0)


def _field(message: list[Any], index: int, default: Any) -> Any:
    """A trailing field of a kernel message, or its default when not sent."""
    return message[index] if len(message) > index else default


def _start_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Future[None]:
    """A task for ``coro``, run up to its first suspension at once when the
    interpreter supports eager tasks (3.12+): a call that never waits then
    costs no loop pass, and still runs inside a real task (asyncio.timeout works)."""
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    return loop.create_task(coro)


def _fd_channel(settings: Settings) -> socket.socket | None:
    """Our end of the descriptor channel (``fd_passing``), if the kernel gave one."""
    if settings.fd_channel_fd < 0:
        return None
    sock = socket.socket(fileno=settings.fd_channel_fd)
    sock.set_inheritable(False)  # the driver's own subprocesses must not hold it
    sock.setblocking(False)
    return sock


def _load_driver_class(settings: Settings) -> type:
    module_name, _, class_name = settings.entrypoint.partition(":")
    if settings.src:
        sys.path.insert(0, settings.src)
    module = importlib.import_module(module_name)
    driver_class = getattr(module, class_name)
    if not isinstance(driver_class, type):
        raise TypeError(f"entrypoint {settings.entrypoint!r} is not a class")
    return driver_class


def _handshake(
    sock: socket.socket, codec: ChildCodec, settings: Settings, loop_name: str
) -> list[list[Any]]:
    """Say Hello and wait for Welcome; return any messages that came after it."""
    hello = hello_message(
        PROTOCOL_MIN,
        PROTOCOL_MAX,
        settings.driver,
        settings.version,
        os.getpid(),
        codec.name,
        sys.version.split()[0],
        loop_name,
    )
    sock.sendall(codec.encode(hello))
    while True:
        data = sock.recv(65536)
        if not data:
            os._exit(EXIT_PROTOCOL)
        messages = codec.feed(data)
        for index, message in enumerate(messages):
            match message:
                case ["ping", int(seq), *_]:  # a spare waiting for its Welcome is pinged
                    sock.sendall(codec.encode(pong_message(seq)))
                case ["welcome", int(_), *_]:
                    return messages[index + 1 :]
                case ["refuse", str(reason), *_]:
                    print(f"drivebay runtime: the kernel refused us: {reason}", file=sys.stderr)
                    os._exit(EXIT_REFUSED)
                case _:
                    print(
                        f"drivebay runtime: expected welcome, got {message[0]!r}", file=sys.stderr
                    )
                    os._exit(EXIT_PROTOCOL)


def _apply_limits(spec: str) -> None:
    """``DRIVEBAY_RLIMITS`` is ``NAME=VALUE,...`` with resource.RLIMIT_* names."""
    if not spec:
        return
    import resource

    for item in spec.split(","):
        name, _, value = item.partition("=")
        limit = int(value)
        # CPU: SIGXCPU at the soft limit says why; SIGKILL at the hard one ends
        # a driver that ignores it.
        hard = limit + CPU_GRACE_S if name == "cpu" else limit
        which = f"RLIMIT_{name.upper()}"
        try:
            resource.setrlimit(getattr(resource, which), (limit, hard))
        except (ValueError, OSError) as exc:  # above the hard limit drivebayd passed on
            inherited = resource.getrlimit(getattr(resource, which))[1]
            print(
                f"drivebay runtime: cannot set {which} to {limit} ({exc}); the hard limit "
                f"this driver inherits from drivebayd is {inherited}: lower the driver's "
                "limits, or raise drivebayd's (LimitNOFILE= for open_files)",
                file=sys.stderr,
            )
            os._exit(EXIT_REFUSED)


def apply_scheduling(policy: str) -> None:
    """``DRIVEBAY_SCHEDULING``: ``batch`` makes this process (and what it
    starts) SCHED_BATCH, which any process may choose for itself: woken by a
    frame from drivebayd, it runs when drivebayd yields the CPU or on another
    one, never in the middle of drivebayd's pass. ``normal`` leaves it as is."""
    if policy != "batch" or not hasattr(os, "SCHED_BATCH"):  # Linux only
        return
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:  # a seccomp filter or an odd kernel: run as is
        print(f"drivebay runtime: cannot use SCHED_BATCH ({exc}); running as is", file=sys.stderr)


async def _serve(
    sock: socket.socket,
    codec: ChildCodec,
    operations: Operations,
    early: list[list[Any]],
    settings: Settings,
) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    outbox = Outbox(loop)
    handler = ChannelLogHandler(outbox, codec, loop)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(handler)
    # Not a ``with`` block: its exit waits for every worker thread, and one
    # stuck in a sync call must not hold the exit up (the process ends with
    # os._exit, threads and all).
    pool = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="driver-op")
    try:
        fd_channel = _fd_channel(settings)
        server = DriverServer(codec, outbox, operations, pool, done, fd_channel)
        transport, _ = await loop.connect_accepted_socket(lambda: server, sock)
        if fd_channel is not None:  # see fd_passing: the kernel may send more than fits at once
            loop.add_reader(fd_channel.fileno(), server.drain_fds)
        try:
            for message in early:
                server._dispatch(message)
            return await done
        finally:
            server.cancel_all()
            transport.close()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def main() -> None:
    settings = Settings(dict(os.environ))
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(level=settings.log_level, stream=sys.stderr)
    _apply_limits(settings.limits)
    apply_scheduling(settings.scheduling)
    sock = socket.socket(fileno=settings.channel_fd)
    sock.set_inheritable(False)  # the driver's own subprocesses must not hold the channel
    codec = ChildCodec(max_frame=settings.max_frame)
    # Chosen (and uvloop imported) before Hello: a warm spare has it loaded.
    runner, loop_name = _event_loop_runner()
    try:
        early = _handshake(sock, codec, settings, loop_name)
    except ProtocolError as exc:
        print(f"drivebay runtime: {exc}", file=sys.stderr)
        os._exit(EXIT_PROTOCOL)
    try:
        operations = Operations(_load_driver_class(settings))
    except BaseException as exc:
        sock.sendall(codec.encode(error_reply(0, exc)))
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(EXIT_LOAD_FAILED)
    ready = ready_message(
        sorted(operations.is_async), operations.has_health, operations.details, operations.hooks
    )
    sock.sendall(codec.encode(ready))
    sock.setblocking(False)
    code = runner(_serve(sock, codec, operations, early, settings))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _event_loop_runner() -> tuple[Callable[[Coroutine[Any, Any, int]], int], str]:
    """uvloop when the driver's environment has it (the builder adds it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run, "asyncio"
    return uvloop.run, "uvloop"


if __name__ == "__main__":
    main()
