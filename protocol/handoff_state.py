"""A handed-off state with its descriptors taken out, and put back.

``handoff()`` returns a dict that may hold *carried objects* inside dicts,
lists and tuples: ``socket.socket`` objects, and unbuffered binary files
(``io.FileIO``: what ``open(path, "rb", buffering=0)`` or
``os.fdopen(fd, "wb", buffering=0)`` return, such as the ends of a pipe).
``take_objects`` replaces each with ``None`` and returns the paths to them:
``entries`` is a list of ``[kind, paths]``, one per distinct object (the same
object found twice is one descriptor, and is one object again on the other
side), where a path is the list of dict keys and list indexes that lead to
it, and ``kind`` is ``"socket:FAMILY:TYPE:PROTO"`` (``TYPE`` with
``SOCK_NONBLOCK`` when the socket is non-blocking), a bare ``"socket"``, or
``"file:MODE"``. The state and the entries cross as plain values; the
descriptors cross the descriptor channel (``fd_passing``), in the entries'
order. ``objects_from`` makes the objects again in the new process (a socket
of the same family and type, a file of the same mode) and ``put_objects``
puts them where they were. A kind that names the socket's family, type and
protocol lets the new process make the object with one system call (the
``getsockname`` by which CPython refuses a descriptor that is not a socket)
instead of five (``socket.socket(fileno=)`` alone asks getsockopt twice more,
the blocking flag one fcntl and one ioctl: a handover's thousands of them).

Anything else with a ``fileno()`` (a buffered file, whose buffer would be
lost; a selector) is refused with one line saying where it is, as is a
carried object in a set, as a dict key, or closed. Sans-I/O, standard
library only.
"""

from __future__ import annotations

import _socket
import contextlib
import io
import os
import socket
from typing import Any

SOCKET = "socket"  # a kind that names nothing more: the system is asked
SOCKET_OF = "socket:"  # + family:type:proto
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
# The plain ints, not the enums socket.socket's properties make of them (slower).
_raw_family = _socket.socket.family.__get__
_raw_type = _socket.socket.type.__get__
FILE = "file:"  # + the FileIO's mode


class StateRefused(ValueError):
    """The state holds something that cannot be handed over (said where); change ``handoff``."""


Carried = socket.socket | io.FileIO
_CARRIED = (socket.socket, io.FileIO)
_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})


def take_objects(state: Any) -> tuple[Any, list[list[Any]], list[Carried]]:
    """``(plain state, entries, objects)``: the carried objects in entries' order."""
    found: dict[int, int] = {}  # id(object) -> its index
    entries: list[list[Any]] = []
    carried: list[Carried] = []

    def carry(value: Carried, path: list[Any]) -> None:
        index = found.get(id(value))
        if index is None:
            if value.fileno() < 0 if isinstance(value, socket.socket) else value.closed:
                raise StateRefused(f"the {_kind_name(value)} at {_where(path)} is closed")
            index = found[id(value)] = len(carried)
            carried.append(value)
            entries.append([_kind(value), []])
        entries[index][1].append(path)

    def walk(value: Any, path: list[Any]) -> Any:
        # Exact types first: a state is mostly plain values, dicts and lists.
        kind = type(value)
        if kind in _PLAIN:
            return value
        if kind is dict:
            plain: dict[Any, Any] = {}
            for key, item in value.items():
                if type(key) is not str and isinstance(key, _CARRIED):
                    raise StateRefused(
                        f"a {_kind_name(key)} is a dict key at {_where(path)}; use it as a value"
                    )
                plain[key] = item if type(item) in _PLAIN else walk(item, [*path, key])
            return plain
        if kind is list or kind is tuple:
            return [
                item if type(item) in _PLAIN else walk(item, [*path, index])
                for index, item in enumerate(value)
            ]
        if isinstance(value, _CARRIED):
            carry(value, path)
            return None
        if isinstance(value, dict):
            return walk(dict(value), path)
        if isinstance(value, (list, tuple)):
            return walk(list(value), path)
        if isinstance(value, (str, bytes, bytearray, int, float, bool)):
            return value
        if isinstance(value, (set, frozenset)):
            for item in value:
                if isinstance(item, _CARRIED):
                    raise StateRefused(
                        f"a {_kind_name(item)} is in a set at {_where(path)}; use a list"
                    )
            return value
        if callable(getattr(value, "fileno", None)):
            raise StateRefused(
                f"{type(value).__name__} at {_where(path)} has a fileno() but cannot be handed "
                "over: only socket.socket objects and unbuffered binary files (io.FileIO, "
                "buffering=0) are; hand over one of those, or its data"
            )
        return value  # a datetime, a dataclass...: the codec's to judge

    return walk(state, []), entries, carried


def objects_from(entries: list[list[Any]], fds: list[int]) -> list[Carried]:
    """The objects owning ``fds``, as ``entries`` name their kinds; on
    failure every descriptor is closed and StateRefused raised."""
    if len(entries) != len(fds):
        _close_all(fds)
        raise StateRefused(f"{len(entries)} descriptors were announced, {len(fds)} arrived")
    made: list[Carried] = []
    try:
        for (kind, _), fd in zip(entries, fds, strict=True):
            made.append(_made(kind, fd))
    except (OSError, ValueError, TypeError) as exc:
        for thing in made:
            thing.close()
        _close_all(fds[len(made) :])
        raise StateRefused(f"a descriptor cannot be made an object again: {exc}") from exc
    return made


def put_objects(state: Any, entries: list[list[Any]], carried: list[Carried]) -> Any:
    """``state`` with each entry's paths holding its object (changed in place)."""
    for (_, paths), thing in zip(entries, carried, strict=True):
        for path in paths:
            if not path:
                raise StateRefused("the state itself cannot be a socket or a file")
            container = state
            for step in path[:-1]:
                container = container[step]
            container[path[-1]] = thing
    return state


def _made(kind: Any, fd: int) -> Carried:
    if isinstance(kind, str) and kind.startswith(SOCKET_OF):
        family, kind_bits, proto = (int(part) for part in kind[len(SOCKET_OF) :].split(":"))
        return socket.socket(family, kind_bits, proto, fileno=fd)
    if kind == SOCKET:
        sock = socket.socket(fileno=fd)
        if not os.get_blocking(fd):  # the flags are shared with the old process's copy
            sock.setblocking(False)
        return sock
    if isinstance(kind, str) and kind.startswith(FILE):
        return io.FileIO(fd, kind[len(FILE) :].replace("b", ""), closefd=True)
    raise ValueError(f"descriptor kind {kind!r} is not known here")


def _kind(value: Carried) -> str:
    if isinstance(value, socket.socket):
        # A timeout is O_NONBLOCK underneath, as is non-blocking: the new
        # process's copy (the same open file) is non-blocking either way.
        bits = _raw_type(value) | (_NONBLOCK if value.gettimeout() is not None else 0)
        return f"{SOCKET_OF}{_raw_family(value)}:{bits}:{value.proto}"
    return FILE + value.mode


def _kind_name(value: Carried) -> str:
    return "socket" if isinstance(value, socket.socket) else "file"


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _where(path: list[Any]) -> str:
    return "state" + "".join(f"[{step!r}]" for step in path)
