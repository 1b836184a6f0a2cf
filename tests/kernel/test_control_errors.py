"""Who is at fault, as the control server answers it: a malformed request is
the client's (exit 2, naming the field); an exception inside a handler is the
daemon's own bug (logged with its traceback, ``internal error``, exit 1),
never blamed on the client's arguments."""

from __future__ import annotations

import asyncio
import logging
import types
from typing import Any

from drivebay.kernel.control.authz import Principal, Role
from drivebay.kernel.control.server import ControlConnection
from drivebay.protocol.control import Reply, Request


class BrokenKernel:
    """In memory: a kernel whose slot table has a bug (a KeyError inside)."""

    config = types.SimpleNamespace(max_frame_bytes=1 << 20)
    stopping = False  # a running kernel

    def all_slots(self) -> list[Any]:
        raise KeyError("a slot the table lost")


def answer(request: Request) -> Reply:
    """The one reply the server sends to ``request``."""
    replies: list[Reply] = []

    async def serve() -> None:
        connection = ControlConnection(BrokenKernel(), None)  # type: ignore[arg-type]
        connection._send = replies.append  # type: ignore[method-assign]
        connection._principal = Principal("the daemon's user", Role.admin)  # as made() finds
        connection.dispatch(request)
        async with asyncio.timeout(10):
            await asyncio.gather(*connection._tasks, *connection._streams)

    asyncio.run(serve())
    assert len(replies) == 1, replies
    return replies[0]


def test_an_exception_inside_a_handler_is_an_internal_error(caplog):
    with caplog.at_level(logging.ERROR, logger="drivebay.control"):
        reply = answer(Request(7, "status", {"names": []}))
    assert (reply.id, reply.ok, reply.code) == (7, False, 1)
    assert reply.error.startswith("internal error (a bug; see the daemon log)"), reply.error
    assert "bad arguments" not in reply.error
    assert reply.error_type == "KernelError"
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "status" in logged[0].getMessage()
    assert "a slot the table lost" in caplog.text and "Traceback" in caplog.text


def test_a_malformed_request_is_the_clients_error_naming_the_field(caplog):
    with caplog.at_level(logging.WARNING, logger="drivebay.control"):
        reply = answer(Request(8, "tail", {"name": "alpha", "lines": "many"}))
    assert (reply.id, reply.ok, reply.code) == (8, False, 2)
    assert "lines must be a number of lines" in reply.error, reply.error
    assert reply.error_type == "RequestError"
    assert not caplog.records  # the client's mistake is not the daemon's log's business
