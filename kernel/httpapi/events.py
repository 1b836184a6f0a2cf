"""``GET /v1/events``: the event ring (``kernel/events.py``) over HTTP.

As Server-Sent Events (``Accept: text/event-stream``): each event with its
``id`` and ``event: TYPE`` (``event: gap`` where events were lost), resumed
after ``Last-Event-ID``, a comment line as heartbeat after ``HEARTBEAT_S``
of silence. As NDJSON (``Accept: application/x-ndjson``): one event per line,
a gap as a ``{"type": "gap", ...}`` record. ``?since=ID`` (``0``: all the ring
holds) and ``?last=N`` as ``drivebayctl events``; the stream stays open.
Without either type the answer is the ``events`` command's JSON list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from drivebay.kernel.control.scope import event_shown
from drivebay.kernel.httpapi.access import still_known

if TYPE_CHECKING:
    from drivebay.kernel.control.authz import Principal
    from drivebay.kernel.control.schema import Event, EventsFollowRequest
    from drivebay.kernel.events import Cursor
    from drivebay.kernel.kernel import Kernel

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
HEARTBEAT_S = 15.0
BATCH = 256


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
    event or heartbeat); ``BadEventId`` before any byte for an id
    that is not one."""
    since = request.headers.get("Last-Event-ID") or asked.since
    if since is None and asked.last is not None:
        since = "0"
    cursor = kernel.events.cursor(since, asked.last)
    headers = {"Content-Type": kind, "Cache-Control": "no-store"}
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    encode = _sse if kind == SSE else _ndjson
    with contextlib.suppress(ConnectionError):  # the client went away
        await _pump(kernel, cursor, response, encode, kind == SSE, peer)
    return response


async def _pump(
    kernel: Kernel,
    cursor: Cursor,
    response: web.StreamResponse,
    encode: Callable[[Event], bytes],
    sse: bool,
    peer: Principal,
) -> None:
    while still_known(kernel, peer):  # a removed token's stream ends here
        events = cursor.take(BATCH)
        if events and peer.drivers is not None:
            events = [event for event in events if event_shown(peer, event)]
            if not events:
                continue  # more may be there at once: take again before waiting
        if events:
            await response.write(b"".join(encode(event) for event in events))
        elif not await cursor.wait(HEARTBEAT_S) and sse:
            await response.write(b": heartbeat\n\n")


def _sse(event: Event) -> bytes:
    lines = [] if event.id is None else [f"id: {event.id}"]
    lines += [f"event: {event.type}", f"data: {msgspec.json.encode(event).decode()}"]
    return ("\n".join(lines) + "\n\n").encode()


def _ndjson(event: Event) -> bytes:
    return msgspec.json.encode(event) + b"\n"
