"""The daemon's event ring: what happened, in order, for operators and programs.

``EventLog`` keeps the last ``events.ring_size`` events (``schema.Event``) in
memory. Each has an id ``BOOT-SEQ``: ``BOOT`` is random at every start of the
daemon, ``SEQ`` grows by one per event, so an id from before a restart is
recognised as such. Events are emitted on the event loop by the parts that
see them happen (the lifecycle of a driver version, the registry, handovers,
the resource book, the update check, the control server's audit); emitting
costs one Struct and never waits.

Readers never hold the daemon up. A reader is a ``Cursor``: the sequence
number of the next event it wants, nothing more; it reads straight from the
ring. A reader that falls so far behind that the ring has dropped events it
had not read yet gets a ``gap`` record, then continues with the oldest event
held. Asking for an id the ring no longer holds, or an id of another boot,
gives a ``gap`` first as well: events are never skipped silently. A gap is
an ``Event`` of type ``gap`` whose ``id`` is null and whose ``data`` says
``reason``, ``after`` (the id asked for or last read) and ``missed`` (how
many events were lost, null when unknown: another boot).

The API for whoever serves events (the control socket's ``events-follow``,
the HTTP API's ``GET /v1/events``), all on the daemon's loop:

- ``log.cursor(since, last=None) -> Cursor``: raises ``BadEventId`` at once
  for an id that is malformed or not issued yet (a client's error). ``since``
  None: only events from now on; ``"0"``: everything the ring holds; an id:
  the events after it. ``last``: at most the newest ``last`` of those held.
- ``cursor.take(limit=None) -> list[Event]``: what is there now (a gap
  first, if one is due), without waiting; advances the cursor.
- ``await cursor.wait(timeout=None) -> bool``: True once ``take`` has
  something, False after ``timeout`` seconds of silence (time for an SSE
  heartbeat). Cancelling it loses nothing.
- ``log.subscribe(since, last=None) -> AsyncIterator[Event]``: the two
  above as one endless iterator (``since`` checked when called); its owner
  ends it by cancelling or closing it.
- ``log.audit(who, what, outcome)``: one audit line and event; a request
  whose type is in ``AUDITED`` is audited when it ends, named by
  ``audit_what(request)`` (the control server does so; so should any other
  transport).

An SSE endpoint, for instance::

    cursor = log.cursor(last_event_id or since)     # BadEventId -> 400
    while True:
        for event in cursor.take(256):
            send(event)                              # "event: gap" when event.type == "gap"
        if not await cursor.wait(15):
            send_heartbeat()
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import msgspec

from drivebay.kernel.control import schema
from drivebay.kernel.control.schema import Event, EventType
from drivebay.kernel.drivers.lifecycle import State, Transition
from drivebay.protocol.control_codes import EXIT_USAGE
from drivebay.protocol.errors import RequestError

if TYPE_CHECKING:
    from drivebay.sandbox.bundles import StoredBundle

audit_log = logging.getLogger("drivebay.audit")

TAKE_BATCH = 256  # events a subscriber takes from the ring at once


class BadEventId(RequestError):
    """``since`` is not an event id (``BOOT-SEQ``, as ``drivebayctl events``
    shows them, or ``0``), or names an event not issued yet. The client's
    fault; exit 2."""

    exit_code = EXIT_USAGE


class EventLog:
    """The ring of the last ``size`` events, and where readers wait for more."""

    def __init__(
        self, size: int, clock: Callable[[], float] = time.time, boot: str | None = None
    ) -> None:
        self.boot = boot or secrets.token_hex(4)
        self._clock = clock
        self._size = size
        self._ring: list[Event | None] = [None] * size
        self._first = 1  # the oldest sequence number held
        self._next = 1  # the sequence number of the next event
        self._changed: asyncio.Event | None = None  # made when a reader waits

    @property
    def size(self) -> int:
        return self._size

    @property
    def first(self) -> int:
        """The sequence number of the oldest event held (``next`` when empty)."""
        return self._first

    @property
    def next(self) -> int:
        """The sequence number the next event gets."""
        return self._next

    def event_id(self, seq: int) -> str:
        return f"{self.boot}-{seq}"

    # -- writing ---------------------------------------------------------------------

    def emit(
        self,
        kind: EventType,
        *,
        driver: str | None = None,
        version: str | None = None,
        resource: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Event:
        """Append one event (dropping the oldest when full) and wake readers."""
        seq = self._next
        event = Event(
            self.event_id(seq), self._clock(), kind, driver, version, resource, dict(data or {})
        )
        self._ring[seq % self._size] = event
        self._next = seq + 1
        if self._next - self._first > self._size:
            self._first = self._next - self._size
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        return event

    def audit(self, who: str, what: str, outcome: str) -> Event:
        """One changing request: who asked (``uid 1000 pid 4242``), what
        (``stop alpha``) and how it ended (``ok``, ``exit 7``, ``failed: ...``);
        one line in the log (logger ``drivebay.audit``) and one event."""
        audit_log.info("%s: %s: %s", who, what, outcome)
        return self.emit("audit", data={"who": who, "what": what, "outcome": outcome})

    def resize(self, size: int) -> None:
        """A new ``events.ring_size`` (a reload): the newest events are kept."""
        if size == self._size:
            return
        kept = self._range(self._first, self._next)[-size:]
        self._size = size
        self._ring = [None] * size
        self._first = self._next - len(kept)
        for offset, event in enumerate(kept):
            self._ring[(self._first + offset) % size] = event

    # -- reading ---------------------------------------------------------------------

    def _range(self, start: int, end: int) -> list[Event]:
        """The events held with sequence numbers in [start, end)."""
        start = max(start, self._first)
        end = min(end, self._next)
        if start >= end:
            return []
        low, high, size = start % self._size, end % self._size, self._size
        if end - start == size or high <= low:
            taken = self._ring[low:] + self._ring[:high]
        else:
            taken = self._ring[low:high]
        return cast(list[Event], taken)

    def held(self) -> list[Event]:
        """Every event the ring holds, oldest first."""
        return self._range(self._first, self._next)

    def gap(self, after: str | None, missed: int | None, reason: str) -> Event:
        """The record that tells a reader events were lost (not kept in the ring)."""
        data = {"reason": reason, "after": after, "missed": missed}
        return Event(None, self._clock(), "gap", data=data)

    def cursor(self, since: str | None, last: int | None = None) -> Cursor:
        """A reader of the events after ``since`` (see the module's docstring);
        ``BadEventId`` for an id that is malformed or not issued yet."""
        start, gap = self._start(since)
        if last is not None:
            start = max(start, self._next - last)
        return Cursor(self, start, gap)

    def subscribe(self, since: str | None, last: int | None = None) -> AsyncIterator[Event]:
        """Every event after ``since``, then each new one as it comes, without
        end; ``BadEventId`` at once for a bad ``since``."""
        return self.cursor(since, last).events()

    def _start(self, since: str | None) -> tuple[int, Event | None]:
        """The first sequence number ``since`` asks for, and the gap before it."""
        if since is None:
            return self._next, None
        if since == "0":
            return self._first, None
        boot, _, number = since.rpartition("-")
        if not boot or not number.isascii() or not number.isdigit() or len(number) > 18:
            raise BadEventId(
                f"{since!r} is not an event id: give one as 'drivebayctl events' shows "
                "it (BOOT-SEQ), or 0 for all the ring holds"
            )
        seq = int(number)
        if boot != self.boot:
            reason = f"{since} is from another run of drivebayd; these are this run's events"
            return self._first, self.gap(since, None, reason)
        if seq >= self._next:
            raise BadEventId(
                f"no event {since} yet (the newest is {self.event_id(self._next - 1)}); "
                "give an id 'drivebayctl events' shows, or 0 for all the ring holds"
            )
        if seq + 1 < self._first:
            missed = self._first - seq - 1
            reason = f"the ring (events.ring_size {self._size}) no longer holds {missed} events"
            return self._first, self.gap(since, missed, f"{reason} after {since}")
        return seq + 1, None

    async def _wait_changed(self) -> None:
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.Event()
        await changed.wait()


class Cursor:
    """One reader's place in the ring: the next sequence number it wants."""

    def __init__(self, log: EventLog, start: int, gap: Event | None) -> None:
        self._log = log
        self._next = start
        self._gap = gap

    @property
    def pending(self) -> bool:
        """Does ``take`` have something now?"""
        return self._gap is not None or self._next < self._log.next

    def take(self, limit: int | None = None) -> list[Event]:
        """The events there are now (up to ``limit``, a gap first when one is
        due), without waiting; the next call goes on after them."""
        log = self._log
        taken: list[Event] = []
        if self._gap is not None:
            taken.append(self._gap)
            self._gap = None
        if self._next < log.first:  # fell behind: the ring dropped what it had not read
            missed = log.first - self._next
            reason = (
                f"this reader fell behind: the ring (events.ring_size {log.size}) "
                f"dropped {missed} events it had not read"
            )
            taken.append(log.gap(log.event_id(self._next - 1), missed, reason))
            self._next = log.first
        end = log.next if limit is None else min(log.next, self._next + limit)
        events = log._range(self._next, end)
        self._next += len(events)
        taken.extend(events)
        return taken

    async def wait(self, timeout: float | None = None) -> bool:
        """Until ``take`` has something (True) or ``timeout`` seconds pass
        (False). Cancel-safe: the cursor moves only in ``take``."""
        if self.pending:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._log._wait_changed()
        except TimeoutError:
            return False
        return True

    async def events(self) -> AsyncIterator[Event]:
        """Every event from here on, without end (the owner cancels it)."""
        while True:
            for event in self.take(TAKE_BATCH):
                yield event
            await self.wait()


# -- what the kernel's parts emit ------------------------------------------------------

# Audited when they end, over any transport: what changes (``call``, the hot
# path, excepted: its volume would flush the ring) and shutdown.
AUDITED = (schema.CHANGING | {schema.ShutdownRequest}) - {schema.CallRequest}


def audit_what(request: schema.ControlRequest) -> str:
    """A request as its audit line names it: ``stop names=['alpha']``; of
    assignments only the keys (values may be secrets), of long texts the size."""
    parts = [str(type(request).__struct_config__.tag)]
    for name, value in msgspec.structs.asdict(request).items():
        if value in (None, [], {}):
            continue
        if name == "assignments":
            value = [str(item).partition("=")[0].removesuffix(":") for item in value]
        text = repr(value)
        parts.append(f"{name}={text if len(text) <= 80 else f'<{len(text)} characters>'}")
    return " ".join(parts)


# A move into STARTING from these is a restart (not a first start).
RESTARTED_FROM = frozenset({State.RUNNING, State.BACKOFF, State.FATAL, State.STARTING})


def exit_fields(code: int) -> dict[str, Any]:
    """``{"exit_status": 3}``, or ``{"signal": 9, "signal_name": "SIGKILL"}``."""
    if code >= 0:
        return {"exit_status": code}
    try:
        name: str | None = signal.Signals(-code).name
    except ValueError:
        name = None
    return {"signal": -code, "signal_name": name}


def driver_moved(
    log: EventLog,
    driver: str,
    version: str,
    move: Transition,
    restarts: int,
    retry_at: float | None,
) -> None:
    """A driver version's move: ``driver.state``; and ``driver.restart`` when
    it is started again after an exit, ``driver.fatal`` when it gave up."""
    data: dict[str, Any] = {"from": str(move.source), "to": str(move.target)}
    data["reason"] = move.reason
    if move.exit_code is not None:
        data.update(exit_fields(move.exit_code))
    log.emit("driver.state", driver=driver, version=version, data=data)
    if move.target is State.STARTING and move.source in RESTARTED_FROM:
        restarted = {"restarts": restarts, "from": str(move.source)}
        log.emit("driver.restart", driver=driver, version=version, data=restarted)
    if move.target is State.FATAL:
        fatal = {"reason": move.reason, "retry_at": retry_at}
        log.emit("driver.fatal", driver=driver, version=version, data=fatal)


def bundle_judged(
    log: EventLog, path: Path, bundle: StoredBundle | None, error: str | None
) -> None:
    """The registry read a bundle of the drivers dir: ``bundle.verified`` or
    ``bundle.invalid`` (with the one line that says why)."""
    name = bundle.manifest.name if bundle is not None else None
    version = bundle.manifest.version if bundle is not None else None
    if error is None and bundle is not None:
        signature = bundle.signature.summary() if bundle.signature is not None else None
        data = {"file": path.name, "digest": bundle.digest, "signature": signature}
        log.emit("bundle.verified", driver=name, version=version, data=data)
        return
    log.emit(
        "bundle.invalid", driver=name, version=version, data={"file": path.name, "message": error}
    )
