"""Every message the driver child sends, each built by one function here.

The kernel reads them as the Structs of ``messages.ToKernel``; the child,
which has no msgspec for certain, sends the same arrays as plain lists
``[tag, field, ...]``, in the Structs' field order. A builder per Struct,
named ``<tag>_message``, is the one place that order is written on the child's
side (tests check each against its Struct). The ``error`` replies have one
builder each on top of ``error_message``: the name the kernel sees and the
words of the message are chosen here, not at the call site.
``result_message`` is on every call's path: it builds the list and nothing more.
Standard library only.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from typing import Any

from . import errors

_RUNTIME = __name__.rpartition(".")[0] + "."  # this package, whatever it is called here

# -- what the child reads of the kernel's messages by index --------------------
# ``Call`` (messages.Call's field order); a sender that predates a field
# leaves it out, and the runtime takes its default.
CALL_OP_ID = 6
CALL_EPOCH = 7

# -- one builder per message (the kernel's Struct in messages.py) ---------------


def hello_message(
    min_version: int,
    max_version: int,
    driver: str,
    version: str,
    pid: int,
    codec: str,
    python: str,
    loop: str,
) -> list[Any]:
    """``Hello``: the child's first message, before any driver code is imported."""
    return ["hello", min_version, max_version, driver, version, pid, codec, python, loop]


def ready_message(
    operations: list[str],
    has_health: bool,
    details: dict[str, list[Any]],
    hooks: list[str],
) -> list[Any]:
    """``Ready``; ``details`` holds ``[signature, summary, is_async,
    takes_op_id]`` by operation; ``hooks`` the reported hooks the class defines."""
    return ["ready", operations, has_health, details, hooks]


def result_message(request_id: int, value: Any) -> list[Any]:
    """``Result``: the reply to a request that succeeded."""
    return ["result", request_id, value]


def error_message(request_id: int, name: str, message: str, trace: str = "") -> list[Any]:
    """``Error``: the reply to a request that failed (id 0: loading the driver)."""
    return ["error", request_id, name, message, trace]


def pong_message(seq: int) -> list[Any]:
    """``Pong``: the answer to the kernel's ``Ping``."""
    return ["pong", seq]


def event_message(resource_id: str, name: str, data: Any) -> list[Any]:
    """``Event``: a notification a driver instance raised with ``emit``."""
    return ["event", resource_id, name, data]


def log_message(level: int, logger: str, text: str) -> list[Any]:
    """``Log``: one record of the driver's ``logging``."""
    return ["log", level, logger, text]


# -- the error replies: each ``error`` the runtime sends, by one function -------


def cancelled(request_id: int, message: str = "cancelled by the kernel") -> list[Any]:
    return error_message(request_id, errors.CANCELLED, message)


def draining(request_id: int) -> list[Any]:
    return error_message(request_id, errors.DRAINING, "driver is draining")


def not_attached(request_id: int, resource_id: str) -> list[Any]:
    message = f"resource {resource_id!r} is not attached to this driver"
    return error_message(request_id, errors.NOT_ATTACHED, message)


def already_attached(request_id: int, resource_id: str) -> list[Any]:
    message = f"resource {resource_id!r} is already attached"
    return error_message(request_id, errors.ALREADY_ATTACHED, message)


def unknown_operation(request_id: int, op: str, known: Iterable[str]) -> list[Any]:
    listed = ", ".join(sorted(known)) or "none"
    message = f"driver has no operation {op!r} (operations: {listed})"
    return error_message(request_id, errors.UNKNOWN_OPERATION, message)


def op_id_given(request_id: int, op: str) -> list[Any]:
    message = f"operation {op!r} takes its op_id from the kernel; do not pass op_id as an argument"
    return error_message(request_id, errors.OP_ID_GIVEN, message)


def no_reconcile(request_id: int, op: str) -> list[Any]:
    message = (
        f"the driver class has no reconcile_operation to settle {op!r}; define "
        "`async def reconcile_operation(self, op_id, operation, args)` (docs/drivers.md)"
    )
    return error_message(request_id, errors.NO_RECONCILE, message)


def state_too_large(request_id: int, resource_id: str, size: int, limit: int) -> list[Any]:
    message = (
        f"the state {resource_id} hands over takes {size} bytes, over the channel's limit of "
        f"{limit}; hand over less (keep bulk data in files), or raise max_frame_bytes in the "
        "daemon's config"
    )
    return error_message(request_id, errors.STATE_TOO_LARGE, message)


def handoff_failed(request_id: int, resource_id: str, reason: str) -> list[Any]:
    message = f"the state of {resource_id} cannot be handed over: {sendable(reason)}"
    return error_message(request_id, errors.HANDOFF_FAILED, message)


def result_too_large(request_id: int, size: int, limit: int) -> list[Any]:
    message = (
        f"the result takes {size} bytes, over the channel's limit of {limit}; return less "
        "(in pages), or raise max_frame_bytes in the daemon's config"
    )
    return error_message(request_id, errors.RESULT_TOO_LARGE, message)


def unencodable_result(request_id: int, value: object, exc: Exception) -> list[Any]:
    message = (
        f"the result ({type(value).__name__}) cannot be sent: {sendable(str(exc))}; return "
        "plain values (None, bool, int, float, str, bytes, list, dict) or the types "
        "docs/protocol.md lists (datetime, UUID, Decimal, Enum, set, dataclass...)"
    )
    return error_message(request_id, errors.UNENCODABLE_RESULT, message)


def error_reply(request_id: int, exc: BaseException) -> list[Any]:
    """The ``error`` message for ``exc``. Whatever the exception holds, the
    reply can be encoded: a ``__str__`` that raises, or text with lone
    surrogates (a file name decoded with ``os.fsdecode``), must not leave the
    call without an answer."""
    kind = type(exc)
    # A builtin and one of the runtime's own (HookMisdefined) are named bare:
    # the runtime's package name is private to the child.
    bare = kind.__module__ == "builtins" or kind.__module__.startswith(_RUNTIME)
    name = kind.__qualname__ if bare else f"{kind.__module__}.{kind.__qualname__}"
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # a broken exception still gets its reply
        text = ""
    try:
        message = str(exc)
    except Exception:
        message = f"(its message could not be read: str() of this {name} failed)"
    if isinstance(exc, MemoryError):
        message = memory_verdict() or message or "out of memory"
    return error_message(request_id, sendable(name), sendable(message), sendable(text))


def sendable(text: str) -> str:
    """``text`` as valid UTF-8: lone surrogates become backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def memory_verdict() -> str:
    """``exceeded memory limit 512 MiB`` when the kernel set one (RLIMIT_AS)."""
    for item in os.environ.get("DRIVEBAY_RLIMITS", "").split(","):
        name, _, value = item.partition("=")
        if name == "as" and value.isdigit():
            return f"exceeded memory limit {int(value) // (1024 * 1024)} MiB"
    return ""
