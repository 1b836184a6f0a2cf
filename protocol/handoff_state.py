"""A handed-off state with its sockets taken out, and put back.

``handoff()`` returns a dict that may hold ``socket.socket`` objects inside
dicts, lists and tuples. ``take_sockets`` replaces each with ``None`` and
returns the paths to them: ``entries`` is a list of ``[kind, paths]``, one
per distinct socket (the same object found twice is one descriptor, and is
one object again on the other side), where a path is the list of dict keys
and list indexes that lead to it. The state and the entries cross as plain
values; the descriptors cross the descriptor channel (``fd_passing``), in
the entries' order. ``put_sockets`` rebuilds the state in the new process
with ``socket.socket(fileno=fd)`` objects (the same family and type).

Only sockets are carried (``kind`` ``"socket"``); any other object with a
``fileno()`` is refused with one line, as is a socket in a set, as a dict
key, or inside another object. Sans-I/O, standard library only.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

SOCKET = "socket"


class StateRefused(ValueError):
    """The state holds something that cannot be handed over (said where); change ``handoff``."""


def take_sockets(state: Any) -> tuple[Any, list[list[Any]], list[socket.socket]]:
    """``(plain state, entries, sockets)``: the sockets in entries' order."""
    found: dict[int, int] = {}  # id(socket) -> its index
    entries: list[list[Any]] = []
    sockets: list[socket.socket] = []

    def walk(value: Any, path: list[Any]) -> Any:
        if isinstance(value, socket.socket):
            index = found.get(id(value))
            if index is None:
                if value.fileno() < 0:
                    raise StateRefused(f"the socket at {_where(path)} is closed")
                index = found[id(value)] = len(sockets)
                sockets.append(value)
                entries.append([SOCKET, []])
            entries[index][1].append(path)
            return None
        if type(value) is dict or isinstance(value, dict):
            plain: dict[Any, Any] = {}
            for key, item in value.items():
                if isinstance(key, socket.socket):
                    raise StateRefused(
                        f"a socket is a dict key at {_where(path)}; use it as a value"
                    )
                plain[key] = walk(item, [*path, key])
            return plain
        if isinstance(value, (list, tuple)):
            return [walk(item, [*path, index]) for index, item in enumerate(value)]
        if isinstance(value, (str, bytes, bytearray, int, float, bool)) or value is None:
            return value
        if isinstance(value, (set, frozenset)):
            if any(isinstance(item, socket.socket) for item in value):
                raise StateRefused(f"a socket is in a set at {_where(path)}; use a list")
            return value
        if callable(getattr(value, "fileno", None)):
            raise StateRefused(
                f"{type(value).__name__} at {_where(path)} has a fileno() but only "
                "socket.socket objects are handed over; hand over a socket, or its data"
            )
        return value  # a datetime, a dataclass...: the codec's to judge

    return walk(state, []), entries, sockets


def put_sockets(state: Any, entries: list[list[Any]], sockets: list[socket.socket]) -> Any:
    """``state`` with each entry's paths holding its socket (changed in place)."""
    if len(entries) != len(sockets):
        raise StateRefused(f"{len(entries)} sockets were announced, {len(sockets)} arrived")
    for (kind, paths), sock in zip(entries, sockets, strict=True):
        if kind != SOCKET:
            raise StateRefused(f"descriptor kind {kind!r} is not known here")
        for path in paths:
            if not path:
                raise StateRefused("the state itself cannot be a socket")
            container = state
            for step in path[:-1]:
                container = container[step]
            container[path[-1]] = sock
    return state


def sockets_from(fds: list[int]) -> list[socket.socket]:
    """Socket objects owning ``fds`` (their family and type read from each,
    non-blocking when the descriptor is: the old process's flags are shared);
    on failure every descriptor is closed and StateRefused raised."""
    made: list[socket.socket] = []
    try:
        for fd in fds:
            sock = socket.socket(fileno=fd)
            made.append(sock)
            if not os.get_blocking(fd):
                sock.setblocking(False)
    except OSError as exc:
        for sock in made:
            sock.close()
        for fd in fds[len(made) :]:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise StateRefused(f"a descriptor handed over is not a socket: {exc}") from exc
    return made


def _where(path: list[Any]) -> str:
    return "state" + "".join(f"[{step!r}]" for step in path)
