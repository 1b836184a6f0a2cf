"""What drivebayd tells systemd (``Type=notify``), over ``kernel.notify``.

- ``READY=1`` once the first reconcile pass is done: every start wave has
  settled (running, or come to rest in a failed state), so units ordered
  after drivebayd find its drivers up.
- ``STATUS=`` one line, the slots counted by state (``4 running, 1 fatal``),
  sent again when a state changes, at most once per ``STATUS_INTERVAL_S``.
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC``, from a task on the event
  loop the reconciler runs on: a loop stuck in a blocking call or a busy
  callback stops the pings, and systemd restarts the daemon.
- ``EXTEND_TIMEOUT_USEC=`` while start-up waits for virtualenvs being built
  (the first start after an install can take minutes), so systemd's
  ``TimeoutStartSec=`` counts from the last build still running.
- ``STOPPING=1`` when shutdown begins (a signal or ``drivebayctl shutdown``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.notify import Notifier
from drivebay.sandbox.cancel_safe import wait_until_done

if TYPE_CHECKING:
    from drivebay.kernel.drivers.slot import DriverSlot
    from drivebay.kernel.kernel import Kernel

STATUS_INTERVAL_S = 1.0  # at most one STATUS= per second, whatever the churn
EXTEND_CHECK_S = 10.0  # at most this often, and at least every 2 x this, while builds run
EXTEND_USEC = 30_000_000  # the time each EXTEND_TIMEOUT_USEC= grants from now


# Running first (what an operator looks for), then the others as ``State`` lists them.
STATUS_ORDER = (State.RUNNING, *(state for state in State if state is not State.RUNNING))


def status_line(states: Iterable[State], phase: str = "") -> str:
    """``4 running, 1 fatal``: driver versions counted by state, in
    ``STATUS_ORDER``; ``phase`` (``starting``, ``stopping``) in front."""
    counts = collections.Counter(states)
    shown = [f"{counts[s]} {s.value.lower()}" for s in STATUS_ORDER if counts[s]]
    line = ", ".join(shown) or "no drivers"
    return f"{phase}: {line}" if phase else line


def building(states: Iterable[State]) -> bool:
    """Start-up is waiting for an environment build: ask systemd for more time."""
    return State.BUILDING in set(states)


class ServiceLink:
    """Keeps systemd told about one kernel, for as long as ``run`` runs."""

    def __init__(self, kernel: Kernel, notifier: Notifier) -> None:
        self._kernel = kernel
        self._notifier = notifier
        self._changed = asyncio.Event()  # for STATUS=
        self._starting = asyncio.Event()  # for EXTEND_TIMEOUT_USEC= during start-up
        self._phase = "starting"
        self._sent = ""

    def _states(self) -> list[State]:
        return [slot.state for slot in self._kernel.all_slots()]

    def _on_state(self, slot: DriverSlot, state: State) -> None:
        self._changed.set()
        self._starting.set()

    def _status(self) -> str:
        return status_line(self._states(), "" if self._phase == "ready" else self._phase)

    def _send_status(self, **more: object) -> None:
        line = self._status()
        if (line != self._sent or more) and self._notifier.send(**more, STATUS=line):
            self._sent = line

    async def run(self) -> None:
        self._kernel.state_listeners.append(self._on_state)
        self._send_status()  # "starting: …" from the first moment
        try:
            async with asyncio.TaskGroup() as group:
                if self._notifier.watchdog_s is not None:
                    group.create_task(self._watchdog(self._notifier.watchdog_s), name="watchdog")
                status = group.create_task(self._follow_states(), name="systemd-status")
                stopping = group.create_task(self._kernel.wait_stopping(), name="systemd-stop")
                await self._start_up(stopping)
                await stopping
                self._phase = "stopping"
                self._send_status(STOPPING=1)
                await status  # until cancelled at the daemon's end
        finally:
            self._kernel.state_listeners.remove(self._on_state)

    async def _start_up(self, stopping: asyncio.Task[None]) -> None:
        """Until the start waves are done (or a stop cuts them short): more
        time from systemd while envs are built; then READY=1."""
        loop = asyncio.get_running_loop()
        ready = loop.create_task(self._kernel.ready.wait())
        extended_at: float | None = None
        try:
            while not (ready.done() or stopping.done()):
                now = loop.time()
                if building(self._states()) and (
                    extended_at is None or now - extended_at >= EXTEND_CHECK_S
                ):
                    self._notifier.send(EXTEND_TIMEOUT_USEC=EXTEND_USEC)
                    extended_at = now
                self._starting.clear()
                changed = loop.create_task(self._starting.wait())
                try:
                    await asyncio.wait(
                        {ready, stopping, changed},
                        timeout=EXTEND_CHECK_S,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    changed.cancel()
        finally:
            ready.cancel()
        if not stopping.done():
            self._phase = "ready"
            self._send_status(READY=1)

    async def _follow_states(self) -> None:
        """STATUS= on state changes, rate-limited."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            self._send_status()
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def _watchdog(self, interval_s: float) -> None:
        while True:
            self._notifier.send(WATCHDOG=1)
            await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def informing(kernel: Kernel, notifier: Notifier) -> AsyncIterator[None]:
    """Keep systemd told while the context lasts (nothing without a socket)."""
    if not notifier.enabled:
        yield
        return
    task = asyncio.get_running_loop().create_task(
        ServiceLink(kernel, notifier).run(), name="systemd"
    )
    try:
        yield
    finally:
        task.cancel()
        await wait_until_done(task)
        if not task.cancelled():
            task.result()  # a bug in the link: raise it here, where it is owned
        notifier.close()
