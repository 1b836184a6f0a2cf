"""The control socket's messages: drivebayctl (or any program) <-> drivebayd.

Same framing and codec as the driver channel. A client sends ``Request``s;
each gets one ``Reply`` with the same id, or, for streaming commands
(``tail -f``), several with ``more=True`` and a last one with ``more=False``.
``code`` is the exit status drivebayctl should use (supervisorctl's where it
has one). A ``Reply`` with id 0 and ``ok=False`` is about the connection (a
refusal, a request over a bound): its ``error`` says why, then the daemon ends
the connection.

An error reply names its kind in ``error_type``: the drivebay error's name
(``NoSuchName``, ``OperationFailed``, ``CallTimeout``, ``RequestError`` for a
malformed request, ``KernelError`` for a bug in the daemon), and for an
operation that raised, the driver's ``traceback``. What each command's
``args`` and ``result`` hold is ``kernel/control/schema.py``.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Request(msgspec.Struct, frozen=True, tag="request"):
    id: int
    command: str
    args: dict[str, Any] = {}


class RawRequest(msgspec.Struct, frozen=True, tag="request"):
    """A ``Request`` as the daemon reads it: ``args`` kept as its MessagePack
    bytes, then decoded once, straight into the command's request Struct
    (decoding to a dict and converting that cost the daemon 0.3 µs a call)."""

    id: int
    command: str
    args: msgspec.Raw = msgspec.Raw(b"\x80")  # an empty map


class Reply(msgspec.Struct, frozen=True, tag="reply"):
    id: int
    ok: bool
    result: Any = None
    error: str = ""
    code: int = 0
    more: bool = False
    error_type: str = ""
    traceback: str = ""  # a failed call: the driver's traceback (call --verbose, --json)
