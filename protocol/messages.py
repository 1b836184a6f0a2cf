"""The kernel's typed view of the wire protocol: one tagged union per direction.

Every message is a frozen, ``array_like`` msgspec Struct, so on the wire it is
the MessagePack array ``[tag, field1, field2, ...]``. The driver child reads and
writes the same arrays without these classes (see ``child_codec``), so it
needs no msgspec. Field order is the contract: append new fields at the end,
with a default (rules in ``versions``).
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Message(msgspec.Struct, frozen=True, array_like=True, tag_field="t"):
    pass


# -- kernel -> driver ----------------------------------------------------------


class Welcome(_Message, tag="welcome", frozen=True):
    """Handshake accepted; ``version`` is the protocol version both will speak."""

    version: int
    driver: str = ""


class Refuse(_Message, tag="refuse", frozen=True):
    """Handshake refused; the child prints ``reason`` to stderr and exits."""

    reason: str


class Attach(_Message, tag="attach", frozen=True):
    """Create the driver instance for ``resource_id``; answered by Result/Error."""

    id: int
    resource_id: str
    properties: dict[str, Any]


class Detach(_Message, tag="detach", frozen=True):
    """Let the instance for ``resource_id`` go; answered by Result/Error."""

    id: int
    resource_id: str


class Call(_Message, tag="call", frozen=True):
    """Run ``op(**args)`` on the instance for ``resource_id``.

    ``timeout_s`` is how long the driver may take (0: no limit); past it the
    kernel sends ``Cancel`` and fails the call with ``CallTimeout``.
    ``op_id`` is the operation's id, passed as ``op_id=`` to an operation
    that declares that parameter (``""``: the operation does not). ``epoch``
    is the epoch under which the node holds the resource (0: no cluster).
    """

    id: int
    resource_id: str
    op: str
    args: dict[str, Any]
    timeout_s: float = 0.0
    op_id: str = ""
    epoch: int = 0


class Reconcile(_Message, tag="reconcile", frozen=True):
    """Ask the instance for ``resource_id`` what became of operation ``op_id``
    (``operation(**args)``), which a node sent and did not see the end of:
    its ``reconcile_operation(op_id, operation, args)``. Answered by
    Result (the operation's result) or Error (it failed, or cannot be
    settled). Sent only to a class whose ``Ready.hooks`` lists it."""

    id: int
    resource_id: str
    op_id: str
    operation: str
    args: dict[str, Any]
    epoch: int = 0


class Health(_Message, tag="health", frozen=True):
    """Run the driver class's ``health()``; answered by Result/Error."""

    id: int


class Cancel(_Message, tag="cancel", frozen=True):
    """Cancel call ``id`` if it is still running (async operations only)."""

    id: int


class Ping(_Message, tag="ping", frozen=True):
    seq: int


class Drain(_Message, tag="drain", frozen=True):
    """Finish in-flight calls, detach every instance, then exit 0."""

    timeout_s: float


class Handoff(_Message, tag="handoff", frozen=True):
    """Ask the instance for ``resource_id`` for its state (its ``handoff()``).

    Answered by Result ``[state, entries]`` (``handoff_state``: sockets out of
    the state, one entry per descriptor), the descriptors sent first on the
    descriptor channel as transfer ``id``; or by Error. The instance is set
    aside until ``HandoffEnd`` says whether it was taken over."""

    id: int
    resource_id: str


class Takeover(_Message, tag="takeover", frozen=True):
    """Create the instance for ``resource_id`` from a handed-off state (its
    ``takeover(state, from_version)``, instead of ``attach``). Its descriptors
    (``entries``' order) come first on the descriptor channel as transfer
    ``id``. Answered by Result/Error; on Error the runtime has closed them."""

    id: int
    resource_id: str
    properties: dict[str, Any]
    state: Any
    entries: list[Any]
    from_version: str


class HandoffEnd(_Message, tag="handoff_end", frozen=True):
    """The set-aside instance for ``resource_id`` was ``taken`` over (it gets
    ``detach()``) or not (it gets ``handoff_aborted()`` and serves on)."""

    id: int
    resource_id: str
    taken: bool


ToDriver = (
    Welcome
    | Refuse
    | Attach
    | Detach
    | Call
    | Reconcile
    | Health
    | Cancel
    | Ping
    | Drain
    | Handoff
    | Takeover
    | HandoffEnd
)


# -- driver -> kernel ----------------------------------------------------------


class Hello(_Message, tag="hello", frozen=True):
    """First message of a child, sent before any driver code is imported."""

    min_version: int
    max_version: int
    driver: str
    version: str
    pid: int
    codec: str = ""
    python: str = ""
    loop: str = ""  # "uvloop" or "asyncio": the event loop the runtime serves on


class OperationInfo(msgspec.Struct, frozen=True, array_like=True):
    """One operation as ``describe`` shows it, read by the runtime with ``inspect``."""

    signature: str  # its parameters without ``self``: "(name: str, size_gb: int) -> dict"
    summary: str = ""  # the first line of its docstring
    is_async: bool = True  # False: it runs in a thread, and a deadline cannot stop it
    takes_op_id: bool = False  # it declares a parameter ``op_id``: the runtime passes its id


class Ready(_Message, tag="ready", frozen=True):
    """The driver class is loaded; the child now takes requests."""

    operations: list[str]
    has_health: bool = False
    details: dict[str, OperationInfo] = {}  # by operation name
    hooks: list[str] = []  # which of hooks.REPORTED_HOOKS the class defines


class Result(_Message, tag="result", frozen=True):
    id: int
    value: Any = None


class Error(_Message, tag="error", frozen=True):
    """Request ``id`` failed (id 0: loading the driver failed)."""

    id: int
    type: str
    message: str
    traceback: str = ""


class Pong(_Message, tag="pong", frozen=True):
    seq: int


class Event(_Message, tag="event", frozen=True):
    """A notification the driver raised on its own."""

    resource_id: str
    name: str
    data: Any = None


class Log(_Message, tag="log", frozen=True):
    """A log record of the driver runtime or of the driver's ``logging``."""

    level: int
    logger: str
    message: str


ToKernel = Hello | Ready | Result | Error | Pong | Event | Log
