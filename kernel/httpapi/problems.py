"""Errors as RFC 9457 problem details (``application/problem+json``).

A problem's ``type`` is the drivebay error's name, as the control socket's
``error_type`` says it (``NoSuchName``, ``OperationFailed``, ``CallTimeout``,
``RequestError`` for a malformed request...), its ``detail`` the one line
drivebayctl prints and ``code`` the exit status drivebayctl uses. ``STATUS``
is the one table from an error's class (or the nearest base class it names)
to the HTTP status.
"""

from __future__ import annotations

import msgspec

from drivebay.kernel.control.handlers import CallFailed
from drivebay.kernel.control.server import error_reply
from drivebay.protocol.errors import OperationFailed

STATUS: dict[str, int] = {
    # the client's request
    "BadRequest": 400,  # malformed: a field missing, unknown or of the wrong type
    "Unauthenticated": 401,  # no credentials (a TCP client without a token or session)
    "PermissionDenied": 403,
    "NoSuchName": 404,  # no such driver, version or resource
    "NoSuchRoute": 404,
    "MethodNotAllowed": 405,
    "TooLarge": 413,
    "Stalled": 408,  # the body did not arrive whole within timeouts.request_s
    "NotRunning": 409,  # the target is not running (or drivebayd is stopping)
    "DriverAbsent": 409,  # the resource's driver (or pinned version) is not installed
    "Busy": 429,  # the resource's mailbox is full
    "RepositoryFailure": 502,
    "RequestError": 400,
    # the driver
    "OperationFailed": 422,  # the operation raised: error_type is the driver's exception
    "DriverFatal": 503,  # crash loop: start it again or drop a fixed bundle
    "CallTimeout": 504,
    "DriverError": 502,  # crashed, hung, broke the protocol, did not start
    # the daemon
    "StateStoreLost": 503,
    "PeerLookupTimeout": 503,  # the user or group database did not answer in time
    "TooManyConnections": 503,  # control.max_connections client connections are open
    "DrivebayError": 500,
}


ROUTING = ("NoSuchRoute", "MethodNotAllowed", "TooLarge")
"""What aiohttp refuses before any command runs, named by its status in ``STATUS``."""


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details of a failed request."""

    type: str  # the drivebay error's name
    title: str
    status: int
    detail: str  # the one line drivebayctl prints
    code: int  # drivebayctl's exit status for it
    error_type: str | None = None  # OperationFailed: the driver's exception class
    traceback: str | None = None  # OperationFailed: the driver's traceback


def problem(command: str, exc: BaseException) -> Problem:
    """The problem of a request for ``command`` that failed with ``exc``
    (anything not a drivebay error is a bug: logged, ``KernelError``, 500)."""
    reply = error_reply(0, command, exc)
    cause = exc.error if isinstance(exc, CallFailed) else exc
    driver_type = cause.type_name if isinstance(cause, OperationFailed) else None
    return Problem(
        type=reply.error_type,
        title=_title(cause),
        status=status_of(cause),
        detail=reply.error,
        code=reply.code,
        error_type=driver_type,
        traceback=reply.traceback or None,
    )


def status_of(exc: BaseException) -> int:
    for kind in type(exc).__mro__:
        status = STATUS.get(kind.__name__)
        if status is not None:
            return status
    return 500


def _title(exc: BaseException) -> str:
    """The first sentence of the error class's docstring: what kind of problem."""
    doc = (type(exc).__doc__ or type(exc).__name__).strip()
    return " ".join(doc.split(".", 1)[0].split())


def plain(name: str, status: int, detail: str, code: int = 1) -> Problem:
    """A problem aiohttp found before any command: no route, a body too large."""
    return Problem(type=name, title=name, status=status, detail=detail, code=code)
