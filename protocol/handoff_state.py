"""A handed-off state with its descriptors taken out, and put back.

``handoff()`` returns a dict that may hold *carried objects* inside dicts,
lists and tuples: ``socket.socket`` objects, and unbuffered binary files
(``io.FileIO``: what ``open(path, "rb", buffering=0)`` or
``os.fdopen(fd, "wb", buffering=0)`` return, such as the ends of a pipe).
``take_objects`` replaces each with ``None`` and returns the paths to them:
``entries`` is a list of ``[kind, paths]``, one per distinct object (the same
object found twice is one descriptor, and is one object again on the other
side), where a path is the list of dict keys and list indexes that lead to
it, and ``kind`` is ``"socket"`` or ``"file:MODE"``. The state and the
entries cross as plain values; the descriptors cross the descriptor channel
(``fd_passing``), in the entries' order. ``objects_from`` makes the objects
again in the new process (a socket of the same family and type, a file of
the same mode) and ``put_objects`` puts them where they were.

Anything else with a ``fileno()`` (a buffered file, whose buffer would be
lost; a selector) is refused with one line saying where it is, as is a
carried object in a set, as a dict key, or closed. Sans-I/O, standard
library only.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from typing import Any

SOCKET = "socket"
FILE = "file:"  # + the FileIO's mode


class StateRefused(ValueError):
    """The state holds something that cannot be handed over (said where); change ``handoff``."""


Carried = socket.socket | io.FileIO
_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})


def take_objects(state: Any) -> tuple[Any, list[list[Any]], list[Carried]]:
    """``(plain state, entries, objects)``: the carried objects in entries' order."""
    found: dict[int, int] = {}  # id(object) -> its index
    entries: list[list[Any]] = []
    carried: list[Carried] = []

    def walk(value: Any, path: list[Any]) -> Any:
        if type(value) in _PLAIN:  # most of a state: no further test
            return value
        if isinstance(value, (socket.socket, io.FileIO)):
            index = found.get(id(value))
            if index is None:
                if value.fileno() < 0 if isinstance(value, socket.socket) else value.closed:
                    raise StateRefused(f"the {_kind_name(value)} at {_where(path)} is closed")
                index = found[id(value)] = len(carried)
                carried.append(value)
                entries.append([_kind(value), []])
            entries[index][1].append(path)
            return None
        if isinstance(value, dict):
            plain: dict[Any, Any] = {}
            for key, item in value.items():
                if isinstance(key, (socket.socket, io.FileIO)):
                    raise StateRefused(
                        f"a {_kind_name(key)} is a dict key at {_where(path)}; use it as a value"
                    )
                plain[key] = walk(item, [*path, key])
            return plain
        if isinstance(value, (list, tuple)):
            return [walk(item, [*path, index]) for index, item in enumerate(value)]
        if isinstance(value, (str, bytes, bytearray, int, float, bool)) or value is None:
            return value
        if isinstance(value, (set, frozenset)):
            for item in value:
                if isinstance(item, (socket.socket, io.FileIO)):
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
    if kind == SOCKET:
        sock = socket.socket(fileno=fd)
        if not os.get_blocking(fd):  # the flags are shared with the old process's copy
            sock.setblocking(False)
        return sock
    if isinstance(kind, str) and kind.startswith(FILE):
        return io.FileIO(fd, kind[len(FILE) :].replace("b", ""), closefd=True)
    raise ValueError(f"descriptor kind {kind!r} is not known here")


def _kind(value: Carried) -> str:
    return SOCKET if isinstance(value, socket.socket) else FILE + value.mode


def _kind_name(value: Carried) -> str:
    return "socket" if isinstance(value, socket.socket) else "file"


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _where(path: list[Any]) -> str:
    return "state" + "".join(f"[{step!r}]" for step in path)
