"""The driver runtime's side of a handover: ``handoff``, ``takeover``, ``handoff_end``.

A mixin of ``runtime.DriverServer`` (which owns the instances, the channel
and the tasks). ``handoff`` sets the resource's instance aside, awaits its
``handoff()``, takes the sockets (and unbuffered files) out of the state
(``handoff_state``), sends their descriptors on the descriptor channel and
then the state as the reply. The instance keeps its own: it is ended only by ``handoff_end``,
with ``detach()`` when its state was taken over and ``handoff_aborted()``
(then it serves again) when not. ``takeover`` collects the descriptors the
kernel sent first, makes the objects again, creates the instance and awaits
its ``takeover(state, from_version)`` instead of ``attach``; when that
fails the runtime closes the objects it made and the instance is dropped.
Standard library only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any

from .child_codec import ChildCodec
from .child_messages import (
    already_attached,
    cancelled,
    error_reply,
    handoff_failed,
    not_attached,
    result_message,
    state_too_large,
)
from .fd_passing import FdInbox, FdTransferError, send
from .handoff_state import Carried, StateRefused, objects_from, put_objects, take_objects

log = logging.getLogger("drivebay.runtime")


class HandoffServing:
    """What ``DriverServer`` adds for moving a resource's state between instances."""

    _codec: ChildCodec
    _instances: dict[str, Any]
    _running: dict[int, asyncio.Future[Any]]
    _loop: asyncio.AbstractEventLoop
    _fd_channel: socket.socket | None
    _fd_inbox: FdInbox
    _set_aside: dict[str, Any]  # resource id -> the instance that handed off
    _handing: dict[str, asyncio.Future[Any]]  # resource id -> its handoff while it runs

    def _send(self, message: list[Any]) -> None:
        raise NotImplementedError

    def _new_instance(self, resource_id: str, properties: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        raise NotImplementedError

    async def _detach_instance(
        self, request_id: int, instance: Any, given_up: str | None = None
    ) -> None:
        raise NotImplementedError

    def _track(self, request_id: int, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as request ``request_id``: a Cancel of the kernel cancels it."""
        task = self._loop.create_task(coro)
        self._running[request_id] = task
        task.add_done_callback(lambda _: self._running.pop(request_id, None))
        return task

    # -- handoff ------------------------------------------------------------------

    def _handoff(self, request_id: int, resource_id: str) -> None:
        instance = self._instances.pop(resource_id, None)
        if instance is None:
            self._send(not_attached(request_id, resource_id))
            return
        self._set_aside[resource_id] = instance
        task = self._track(request_id, self._hand_off(request_id, resource_id, instance))
        self._handing[resource_id] = task
        task.add_done_callback(lambda _: self._handing.pop(resource_id, None))

    async def _hand_off(self, request_id: int, resource_id: str, instance: Any) -> None:
        try:
            state = await instance.handoff()
        except asyncio.CancelledError:
            self._send(cancelled(request_id, "handoff cancelled by the kernel"))
            return
        except Exception as exc:
            self._send(error_reply(request_id, exc))
            return
        try:
            if not isinstance(state, dict):
                raise StateRefused(f"handoff() returned a {type(state).__name__}, not a dict")
            plain, entries, carried = take_objects(state)
            frame = self._codec.encode(result_message(request_id, [plain, entries]))
        except StateRefused as exc:
            self._send(handoff_failed(request_id, resource_id, str(exc)))
            return
        except Exception as exc:  # a value the wire cannot carry
            self._send(handoff_failed(request_id, resource_id, f"a value cannot be sent: {exc}"))
            return
        size, limit = len(frame) - 4, self._codec.max_frame
        if size > limit:
            self._send(state_too_large(request_id, resource_id, size, limit))
            return
        try:
            if carried:
                await send(self._fd_socket(), request_id, [c.fileno() for c in carried])
        except asyncio.CancelledError:  # the kernel forgets what it got of them
            self._send(cancelled(request_id, "handoff cancelled by the kernel"))
            return
        except (OSError, RuntimeError) as exc:
            self._send(handoff_failed(request_id, resource_id, f"descriptors not sent: {exc}"))
            return
        self._out_frame(frame)  # after the descriptors: the kernel finds them queued

    def _out_frame(self, frame: bytes) -> None:
        raise NotImplementedError

    def drain_fds(self) -> None:
        raise NotImplementedError

    def _fd_socket(self) -> socket.socket:
        if self._fd_channel is None:
            raise RuntimeError("this runtime has no descriptor channel")
        return self._fd_channel

    # -- takeover -----------------------------------------------------------------

    def _takeover(
        self,
        request_id: int,
        resource_id: str,
        properties: dict[str, Any],
        state: Any,
        entries: list[Any],
        from_version: str,
    ) -> None:
        # The kernel sent the descriptors before this message: they are queued.
        self.drain_fds()
        try:
            fds = self._fd_inbox.take(request_id, len(entries))
        except FdTransferError as exc:
            self._send(handoff_failed(request_id, resource_id, str(exc)))
            return
        try:
            carried = objects_from(entries, fds)
        except StateRefused as exc:
            self._send(handoff_failed(request_id, resource_id, str(exc)))
            return
        if resource_id in self._instances:
            _close(carried)
            self._send(already_attached(request_id, resource_id))
            return
        try:
            rebuilt = put_objects(state, entries, carried)
        except (StateRefused, LookupError, TypeError) as exc:
            _close(carried)
            self._send(handoff_failed(request_id, resource_id, f"cannot rebuild the state: {exc}"))
            return
        work = self._taking_over(
            request_id, resource_id, properties, rebuilt, from_version, carried
        )
        self._track(request_id, work)

    async def _taking_over(
        self,
        request_id: int,
        resource_id: str,
        properties: dict[str, Any],
        state: Any,
        from_version: str,
        carried: list[Carried],
    ) -> None:
        """Create the instance and await its ``takeover``; on any failure
        close the objects the runtime made and drop the instance."""
        try:
            instance = self._new_instance(resource_id, properties)
            await instance.takeover(state, from_version)
        except asyncio.CancelledError:
            _close(carried)
            self._send(cancelled(request_id, "takeover cancelled by the kernel"))
            return
        except Exception as exc:
            _close(carried)
            self._send(error_reply(request_id, exc))
            return
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Given up on, but done anyway: the kernel hands back to the old
            # instance, so this one is detached here.
            await self._detach_instance(request_id, instance, "takeover cancelled by the kernel")
            return
        self._instances[resource_id] = instance
        self._send(result_message(request_id, None))

    # -- the end of a handoff -------------------------------------------------------

    def _handoff_end(self, request_id: int, resource_id: str, taken: bool) -> None:
        self._spawn(self._end_handoff(request_id, resource_id, taken))

    async def _end_handoff(self, request_id: int, resource_id: str, taken: bool) -> None:
        handing = self._handing.get(resource_id)
        if handing is not None:  # cancelled by the kernel's give-up: let it end first
            await asyncio.wait([handing])
        instance = self._set_aside.pop(resource_id, None)
        if instance is None:
            self._send(result_message(request_id, None))  # ending is idempotent
            return
        if taken or resource_id in self._instances:
            await self._detach_instance(request_id, instance)
            return
        self._instances[resource_id] = instance  # it serves on, whatever its hook says
        aborted = getattr(instance, "handoff_aborted", None)
        try:
            if aborted is not None:
                await aborted()
        except Exception as exc:
            log.exception("handoff_aborted of %s raised; it serves on", resource_id)
            self._send(error_reply(request_id, exc))
            return
        self._send(result_message(request_id, None))


def _close(carried: list[Carried]) -> None:
    for thing in carried:
        thing.close()
