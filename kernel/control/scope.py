"""What a token limited to drivers sees: its drivers, their resources, their events.

A bearer token may carry ``drivers`` globs (``net-*``). ``authz.check``
refuses a request that names a driver outside them; this module bounds what
the reading requests that name none answer, so that such a token cannot read
around its limit:

- ``status``: the rows of its drivers (an INVALID bundle, which names no
  driver, is left out);
- ``resources`` (and ``GET /v1/resources/{id}``): the resources of its drivers;
- ``avail``: the bundles and offers of its drivers;
- ``events`` and ``events -f`` (SSE and NDJSON alike): the events about its
  drivers and their resources, and ``gap`` records; not audit lines nor
  events that name no driver;
- ``GET /metrics``: the series of its drivers, and the daemon-wide ones
  (``render_metrics`` passes ``sees`` to the snapshot).

A resource of another driver is answered as a resource that does not exist
(``authz.check``: the same ``NoSuchName``, 404 / exit 4), so a limited token
learns nothing of other drivers' resource ids; a driver outside the globs is
refused by its name alone (403), which says nothing of whether it exists; and
an unknown driver name is answered with the known names it may see only
(``screened``). A principal without globs sees everything: every function returns at
its first test.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drivebay.kernel.control import schema as S
from drivebay.kernel.drivers.lifecycle import NOT_RUNNING, State
from drivebay.protocol.control_codes import EXIT_NOT_RUNNING_STATE, EXIT_OK
from drivebay.protocol.errors import NoSuchName

if TYPE_CHECKING:
    from drivebay.kernel.control.authz import Principal


def sees(principal: Principal, driver: str | None) -> bool:
    """May ``principal`` see ``driver`` (None: something that names no driver)?"""
    globs = principal.drivers
    if globs is None:
        return True
    return driver is not None and any(fnmatch.fnmatchcase(driver, glob) for glob in globs)


def seer(principal: Principal) -> Callable[[str | None], bool] | None:
    """``sees`` bound to ``principal``; None when it sees everything."""
    if principal.drivers is None:
        return None
    return lambda driver: sees(principal, driver)


def shown(
    principal: Principal, request: S.ControlRequest, result: Any, code: int
) -> tuple[Any, int]:
    """The result of a reading request, and its exit code, as ``principal``
    may see them (``status``'s code says whether a row it shows is not running)."""
    if principal.drivers is None:
        return result, code
    match request:
        case S.StatusRequest():
            rows = [row for row in result if row.version is not None and sees(principal, row.name)]
            return rows, status_code(rows)
        case S.ResourcesRequest():  # rows as the book makes them: dicts of ResourceRow's fields
            return [row for row in result if sees(principal, _field(row, "driver"))], code
        case S.AvailRequest():
            return [row for row in result if sees(principal, row.name)], code
        case S.EventsRequest():
            return [event for event in result if event_shown(principal, event)], code
    return result, code


def _field(row: Any, name: str) -> Any:
    """A field of a result row: a Struct, or a dict of its fields."""
    return row.get(name) if isinstance(row, dict) else getattr(row, name)


def status_code(rows: list[S.StatusRow]) -> int:
    """``status``'s exit code: 3 when a row is in a state that is not running."""
    return EXIT_NOT_RUNNING_STATE if any(State(r.state) in NOT_RUNNING for r in rows) else EXIT_OK


def chunk_shown(principal: Principal, request: S.ControlRequest, chunk: Any) -> bool:
    """Is one chunk of a streaming request's answer for ``principal``?"""
    if principal.drivers is None or not isinstance(request, S.EventsFollowRequest):
        return True
    return event_shown(principal, chunk)


def event_shown(principal: Principal, event: S.Event) -> bool:
    """An event about one of the principal's drivers, or a gap in the stream."""
    return event.type == "gap" or sees(principal, event.driver)


class NoSuchDriver(NoSuchName):
    """A command named a driver (version) the daemon does not know; ``known``
    are the names it knows (``name@version``). Its type on the wire is
    ``NoSuchName``, as for an unknown resource (``server.error_reply``)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no such driver: {name} (known: {', '.join(known) or 'none'})")
        self.name = name
        self.known = known


def no_such_driver(name: str, known: list[str]) -> NoSuchDriver:
    """The error for an unknown driver name (``Kernel.slot``)."""
    return NoSuchDriver(name, known)


def screened(principal: Principal, exc: BaseException) -> BaseException:
    """``exc`` as a principal limited to drivers may read it: an unknown driver
    name is answered with only the known names it may see."""
    if principal.drivers is None or not isinstance(exc, NoSuchDriver):
        return exc
    visible = [known for known in exc.known if sees(principal, known.partition("@")[0])]
    return NoSuchDriver(exc.name, visible)
