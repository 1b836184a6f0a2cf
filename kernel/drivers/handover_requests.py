"""The kernel's requests of a handover, as a part of ``DriverProcess``.

``handoff`` asks the old process for an instance's state; its descriptors
(sent first on the descriptor channel, ``protocol.fd_passing``) are
collected into a ``HandedOff`` the caller closes. ``takeover`` sends the new
process the kernel's copies and then the state, after checking they fit
(``fd_room``: the ``open_files`` limit; the frame limit), and waits, when it
gave up on it, until the takeover really ended. ``handoff_end`` tells the
old process whether its set-aside instance was taken over. ``state_move``
puts the three together.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from drivebay.kernel.config import TimeoutSettings
from drivebay.kernel.drivers.fd_room import DescriptorRoom, NoRoom
from drivebay.protocol.errors import DriverCrashed, HandoverFailed
from drivebay.protocol.fd_passing import FdInbox, FdTransferError, drain, send
from drivebay.protocol.messages import Handoff, HandoffEnd, Ready, Takeover

if TYPE_CHECKING:
    from drivebay.sandbox.spawn import ChildProcess, SpawnSpec


class HandoverRequests:
    """What ``DriverProcess`` adds for moving a resource's state (a mixin)."""

    name: str
    spec: SpawnSpec
    timeouts: TimeoutSettings
    ready: Ready | None
    _ids: itertools.count[int]
    _child: ChildProcess | None
    _channel: Any
    _max_depth: int
    _fd_inbox: FdInbox
    _fd_reader: int
    _room: DescriptorRoom
    _loop: asyncio.AbstractEventLoop

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    def _request(
        self, request_id: int, message: Any, limit: float, what: str | tuple[str, str]
    ) -> Coroutine[Any, Any, Any]:
        raise NotImplementedError

    def _check_depth(self, args: dict[str, Any], op: str) -> None:
        raise NotImplementedError

    def finished(self, request_id: int) -> asyncio.Future[None] | None:
        raise NotImplementedError

    def kill_hung(self, reason: str) -> None:
        raise NotImplementedError

    @property
    def hooks(self) -> frozenset[str]:
        """The hooks its driver class defines that ``Ready`` reports (``handoff``,
        ``takeover``, ``handoff_aborted``, ``reconcile_operation``)."""
        return frozenset(self.ready.hooks) if self.ready is not None else frozenset()

    async def handoff(self, resource_id: str) -> HandedOff:
        """The state of ``resource_id``'s instance (its ``handoff()``), which
        is set aside until ``handoff_end``. The descriptors in it are the
        caller's to close (``HandedOff.close``). Raises OperationFailed (the
        hook raised, or the state cannot travel), HandoverFailed (its
        descriptors did not all arrive), CallTimeout, DriverCrashed."""
        request_id = next(self._ids)
        self._fd_inbox.expect(request_id)
        try:
            value = await self._request(
                request_id,
                Handoff(request_id, resource_id),
                self.timeouts.call_s,
                f"handoff of {resource_id}",
            )
            state, entries = _state_and_entries(value, self.name)
            self._drain_fds()  # queued before the reply
            try:
                fds = self._fd_inbox.take(request_id, len(entries))
            except FdTransferError as exc:
                raise HandoverFailed(
                    f"{self.name}: the descriptors of {resource_id} did not arrive: {exc}; "
                    "if drivebayd is out of descriptors, raise its LimitNOFILE"
                ) from exc
        except BaseException:
            self._fd_inbox.forget(request_id)
            raise
        return HandedOff(state, entries, fds)

    async def takeover(
        self, resource_id: str, properties: dict[str, Any], handed: HandedOff, from_version: str
    ) -> None:
        """Create ``resource_id``'s instance from ``handed`` (its ``takeover``).
        The caller keeps its copies of the descriptors until this returns.
        Raises HandoverFailed (the state or its descriptors do not fit this
        process), OperationFailed (the hook raised; the child closed its
        copies), CallTimeout, DriverCrashed."""
        try:
            async with self._room.reserved(self.pid, len(handed.fds)):
                await self._take_over(resource_id, properties, handed, from_version)
        except NoRoom as exc:
            raise HandoverFailed(
                f"{self.name} cannot take over {resource_id}: its state holds {exc.count} "
                f"descriptors, and the process holds {exc.held} of its open_files limit of "
                f"{exc.limit}; raise limits.open_files in its driver.yaml (or the daemon's config)"
            ) from None

    async def _take_over(
        self, resource_id: str, properties: dict[str, Any], handed: HandedOff, from_version: str
    ) -> None:
        request_id = next(self._ids)
        message = Takeover(
            request_id, resource_id, properties, handed.state, handed.entries, from_version
        )
        frame = self._channel.codec.encode(message)  # encoded once: sized, then sent
        size = len(frame) - 4
        if size > self.spec.max_frame:
            raise HandoverFailed(
                f"the state of {resource_id} takes {size} bytes with its properties, over the "
                f"channel's limit of {self.spec.max_frame}; hand over less, or raise "
                "max_frame_bytes in the daemon's config"
            )
        if self._max_depth:
            self._check_depth({"state": handed.state}, "takeover")
        if handed.fds:
            if not self.alive or self._child is None:
                raise DriverCrashed(
                    f"{self.name} is not running; takeover of {resource_id} not sent"
                )
            try:
                async with asyncio.timeout(self.timeouts.call_s):
                    await send(self._child.fd_channel, request_id, handed.fds)
            except (OSError, TimeoutError) as exc:
                raise HandoverFailed(
                    f"{self.name}: the descriptors of {resource_id} could not be sent: {exc}"
                ) from exc
        try:
            await self._request(
                request_id, frame, self.timeouts.call_s, f"takeover of {resource_id}"
            )
        except BaseException:
            await self._takeover_ended(request_id, resource_id)
            raise

    async def _takeover_ended(self, request_id: int, resource_id: str) -> None:
        """After a takeover given up on: return once it has really ended in the
        child (cancelled, its sockets closed), so the old instance never serves
        beside it; one that does not end within the call timeout gets this
        process killed as hung."""
        ended = self.finished(request_id)
        if ended is None:
            return
        grace = self.timeouts.call_s
        done, _ = await asyncio.wait([ended], timeout=grace)
        if not done:
            self.kill_hung(
                f"the takeover of {resource_id} did not end within {grace:g}s of its cancellation"
            )
            await asyncio.wait([ended], timeout=self.timeouts.kill_s + 5)

    async def handoff_end(self, resource_id: str, taken: bool) -> None:
        """End the handoff of ``resource_id``: ``detach()`` the set-aside
        instance when its state was ``taken``, else ``handoff_aborted()`` (it
        serves on)."""
        request_id = next(self._ids)
        what = f"{'detach' if taken else 'handoff_aborted'} of {resource_id}"
        await self._request(
            request_id, HandoffEnd(request_id, resource_id, taken), self.timeouts.call_s, what
        )

    def _drain_fds(self) -> None:
        assert self._child is not None
        if not drain(self._child.fd_channel, self._fd_inbox) and self._fd_reader >= 0:
            self._loop.remove_reader(self._fd_reader)  # the child is gone
            self._fd_reader = -1


class HandedOff:
    """A state handed off: plain values, where its sockets were (``entries``),
    and the kernel's copies of their descriptors, closed by ``close``."""

    __slots__ = ("entries", "fds", "state")

    def __init__(self, state: Any, entries: list[Any], fds: list[int]) -> None:
        self.state = state
        self.entries = entries
        self.fds = fds

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _state_and_entries(value: Any, name: str) -> tuple[Any, list[Any]]:
    """A handoff's reply ``[state, entries]``; ProtocolError-like HandoverFailed otherwise."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[1], list)
        and all(isinstance(entry, list) and len(entry) == 2 for entry in value[1])
    ):
        return value[0], value[1]
    raise HandoverFailed(f"{name} answered a handoff with something that is not [state, entries]")
