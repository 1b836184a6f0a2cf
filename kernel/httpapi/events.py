"""``GET /v1/events``: the event ring (``kernel/events.py``) over HTTP.

As Server-Sent Events (``Accept: text/event-stream``): each event with its
``id`` and ``event: TYPE`` (``event: gap`` where events were lost), resumed
after ``Last-Event-ID`` (which then stands for ``since``, and ``last`` is
not applied: a resumed reader gets every event it missed, or a gap), a
comment line as heartbeat after ``events.heartbeat_s`` of silence. As
NDJSON (``Accept: application/x-ndjson``): one event per line, a gap as a
``{"type": "gap", ...}`` record. ``?since=ID`` (``0``: all the ring holds)
and ``?last=N`` as ``drivebayctl events``; the stream stays open.
Without either type the answer is the ``events`` command's JSON list.

A stream ends only when the client goes away, or on an error: the daemon
stopping, or a fault of its own. The error is the stream's last record, a
``problem`` event (``event: problem`` in SSE) whose ``data`` is the RFC 9457
problem, and the body then ends; an event stream that ends without one was
cut (the connection broke).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from drivebay.kernel.control.schema import Event
from drivebay.kernel.control.scope import event_shown
from drivebay.kernel.httpapi.access import still_known
from drivebay.kernel.httpapi.problems import problem
from drivebay.protocol.errors import NotRunning

if TYPE_CHECKING:
    from drivebay.kernel.control.authz import Principal
    from drivebay.kernel.control.schema import EventsFollowRequest
    from drivebay.kernel.events import Cursor
    from drivebay.kernel.kernel import Kernel

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
BATCH = 256
STOPPING = (
    "drivebayd is stopping: this stream ends; connect again once it has started "
    "(with Last-Event-ID, a gap says what was lost)"
)


def wanted(request: web.Request) -> str | None:
    """The streaming type the client accepts, if any."""
    accept = request.headers.get("Accept", "")
    for kind in (SSE, NDJSON):
        if kind in accept:
            return kind
    return None


async def stream_events(
    kernel: Kernel,
    request: web.Request,
    asked: EventsFollowRequest,
    kind: str,
    peer: Principal,
) -> web.StreamResponse:
    """The events after ``asked.since`` (or ``Last-Event-ID``) that ``peer``
    may see (``scope.event_shown``), then each new one, until the client
    goes away, the daemon stops or the peer's token is removed (at the next
    event or heartbeat); ``BadEventId`` before any byte for an id that is
    not one."""
    resumed = request.headers.get("Last-Event-ID")
    since, last = (resumed, None) if resumed else (asked.since, asked.last)
    if since is None and last is not None:
        since = "0"
    cursor = kernel.events.cursor(since, last)
    headers = {"Content-Type": kind, "Cache-Control": "no-store"}
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    encode = _sse if kind == SSE else _ndjson
    with contextlib.suppress(ConnectionError):  # the client went away
        try:
            await _pump(kernel, cursor, response, encode, kind == SSE, peer)
        except ConnectionError:
            raise
        except Exception as exc:  # the daemon stopping, or a fault: the last record
            await response.write(encode(problem_event("events-follow", exc)))
        await response.write_eof()
    return response


def problem_event(command: str, exc: BaseException) -> Event:
    """The record that ends a stream on ``exc``: a ``problem`` event whose
    data is the RFC 9457 problem (its set fields)."""
    found = msgspec.to_builtins(problem(command, exc))
    return Event(None, time.time(), "problem", data=found)


async def _pump(
    kernel: Kernel,
    cursor: Cursor,
    response: web.StreamResponse,
    encode: Callable[[Event], bytes],
    sse: bool,
    peer: Principal,
) -> None:
    """Write the events ``peer`` may see as they come, a heartbeat after
    silence, until the daemon stops (``NotRunning``), the client goes away
    or the peer's token is removed."""
    loop = asyncio.get_running_loop()
    stopping = loop.create_task(kernel.wait_stopping())
    try:
        while still_known(kernel, peer):  # a removed token's stream ends here
            events = cursor.take(BATCH)
            if events and peer.drivers is not None:
                events = [event for event in events if event_shown(peer, event)]
                if not events:
                    continue  # more may be there at once: take again before waiting
            if events:
                await response.write(b"".join(encode(event) for event in events))
                continue
            if stopping.done():
                raise NotRunning(STOPPING)
            waiting = loop.create_task(cursor.wait(kernel.config.events.heartbeat_s))
            try:
                await asyncio.wait((waiting, stopping), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
            if waiting.done() and not waiting.cancelled() and not waiting.result() and sse:
                await response.write(b": heartbeat\n\n")
    finally:
        stopping.cancel()


def _sse(event: Event) -> bytes:
    lines = [] if event.id is None else [f"id: {event.id}"]
    lines += [f"event: {event.type}", f"data: {msgspec.json.encode(event).decode()}"]
    return ("\n".join(lines) + "\n\n").encode()


def _ndjson(event: Event) -> bytes:
    return msgspec.json.encode(event) + b"\n"
