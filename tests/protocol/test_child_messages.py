"""Every message the driver child sends comes from one builder in
``child_messages``, and the kernel reads each builder's output, from either
child codec, as the Struct it stands for, field by field."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest

from drivebay import protocol
from drivebay.protocol import child_messages as sent
from drivebay.protocol import errors
from drivebay.protocol.child_codec import ChildCodec
from drivebay.protocol.codec import MessageCodec
from drivebay.protocol.errors import CallTimeout, DriverCrashed, OperationFailed, error_name
from drivebay.protocol.messages import (
    Call,
    Error,
    Event,
    Hello,
    Log,
    OperationInfo,
    Pong,
    Ready,
    Result,
    ToKernel,
)
from drivebay.sandbox.runtime_dir import CHILD_MODULES

CODECS = ["msgspec", "stdlib"]
KERNEL_READS: tuple[type[msgspec.Struct], ...] = get_args(ToKernel)


def tag(struct: type[msgspec.Struct]) -> str:
    return str(struct.__struct_config__.tag)


TAGS = {tag(struct) for struct in KERNEL_READS}


class Broken(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def read_by_kernel(message: list[Any], codec: str) -> Any:
    """``message`` as the kernel reads it from a child on ``codec``."""
    child = ChildCodec(force=codec)
    assert child.name.startswith(codec)  # the msgspec path really is msgspec here
    kernel: MessageCodec[ToKernel] = MessageCodec(ToKernel, "driver")
    (received,) = kernel.feed(child.encode(message))
    return received


# -- one builder per message: every field where the kernel's Struct has it ----

# Each builder called with a distinct value per field, and the Struct the
# kernel must read from it: a swapped or missing field shows.
BUILT: dict[type[msgspec.Struct], tuple[list[Any], msgspec.Struct]] = {
    Hello: (
        sent.hello_message(1, 2, "dir_volumes", "1.2.0", 4242, "stdlib", "3.11.7", "uvloop"),
        Hello(1, 2, "dir_volumes", "1.2.0", 4242, "stdlib", "3.11.7", "uvloop"),
    ),
    Ready: (
        sent.ready_message(
            ["grow", "list"],
            True,
            {
                "grow": ["(size: int, op_id: str) -> dict", "Grow it.", True, True],
                "list": ["()", "", False, False],
            },
            ["handoff", "takeover"],
        ),
        Ready(
            ["grow", "list"],
            True,
            {
                "grow": OperationInfo("(size: int, op_id: str) -> dict", "Grow it.", True, True),
                "list": OperationInfo("()", "", False),
            },
            ["handoff", "takeover"],
        ),
    ),
    Result: (
        sent.result_message(7, {"size": 3, "tags": ["a", "b"], "raw": b"\x00"}),
        Result(7, {"size": 3, "tags": ["a", "b"], "raw": b"\x00"}),
    ),
    Error: (
        sent.error_message(8, "ValueError", "bad size", "Traceback (most recent call last):"),
        Error(8, "ValueError", "bad size", "Traceback (most recent call last):"),
    ),
    Pong: (sent.pong_message(9), Pong(9)),
    Event: (
        sent.event_message("vol-1", "grown", {"size": 4}),
        Event("vol-1", "grown", {"size": 4}),
    ),
    Log: (
        sent.log_message(30, "dir_volumes", "low on space"),
        Log(30, "dir_volumes", "low on space"),
    ),
}


def test_every_message_the_kernel_reads_has_its_builder() -> None:
    """A Struct added to ``ToKernel`` fails here until the child can send it."""
    assert set(BUILT) == set(KERNEL_READS)
    builders = {name for name in vars(sent) if name.endswith("_message")}
    assert builders == {f"{tag(struct)}_message" for struct in KERNEL_READS}
    for name in builders:
        assert callable(getattr(sent, name)), name


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("struct", KERNEL_READS, ids=tag)
def test_each_builder_gives_its_struct_field_by_field(
    struct: type[msgspec.Struct], codec: str
) -> None:
    message, expected = BUILT[struct]
    # Every field sent, defaults too: a field appended to a Struct must be
    # appended to its builder.
    assert len(message) == 1 + len(struct.__struct_fields__)
    received = read_by_kernel(message, codec)
    assert type(received) is struct
    assert received == expected


def literal_messages(tree: ast.AST) -> list[tuple[str, str]]:
    """``(tag, enclosing function)`` of each list or tuple literal that starts
    with the tag of a message the kernel reads."""
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.List | ast.Tuple) and child.elts:
                first = child.elts[0]
                if isinstance(first, ast.Constant) and first.value in TAGS:
                    found.append((first.value, where))
            inner = (
                child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else where
            )
            visit(child, inner)

    visit(tree, "")
    return found


def child_module(name: str) -> ast.Module:
    return ast.parse((Path(protocol.__file__).parent / name).read_text())


def test_each_message_layout_is_written_once_in_its_builder() -> None:
    assert sorted(literal_messages(child_module("child_messages.py"))) == sorted(
        (name, f"{name}_message") for name in TAGS
    )


@pytest.mark.parametrize("name", sorted(set(CHILD_MODULES) - {"child_messages.py"}))
def test_no_other_child_module_writes_a_message_itself(name: str) -> None:
    assert literal_messages(child_module(name)) == []


# -- the error replies: one builder each, names shared with the kernel --------

ERROR_BUILDERS: dict[str, Callable[[], list[Any]]] = {
    errors.CANCELLED: lambda: sent.cancelled(7),
    errors.DRAINING: lambda: sent.draining(7),
    errors.NOT_ATTACHED: lambda: sent.not_attached(7, "vol-1"),
    errors.ALREADY_ATTACHED: lambda: sent.already_attached(7, "vol-1"),
    errors.UNKNOWN_OPERATION: lambda: sent.unknown_operation(7, "grow", ["shrink", "list"]),
    errors.RESULT_TOO_LARGE: lambda: sent.result_too_large(7, 20_000_000, 16_777_216),
    errors.STATE_TOO_LARGE: lambda: sent.state_too_large(7, "vol-1", 20_000_000, 16_777_216),
    errors.HANDOFF_FAILED: lambda: sent.handoff_failed(7, "vol-1", "a socket is in a set"),
    errors.OP_ID_GIVEN: lambda: sent.op_id_given(7, "grow"),
    errors.NO_RECONCILE: lambda: sent.no_reconcile(7, "grow"),
    errors.UNENCODABLE_RESULT: lambda: sent.unencodable_result(
        7, object(), TypeError("cannot encode objects of type builtins.object \udcff")
    ),
}
DRIVER_EXCEPTIONS: dict[str, BaseException] = {
    "ValueError": ValueError("bad size"),
    "tests.protocol.test_child_messages.Broken": Broken(),
    "FileNotFoundError": OSError(2, "No such file", "/tmp/\udcff"),  # os.fsdecode made it
    "MemoryError": MemoryError(),
}


def test_every_runtime_error_name_has_its_builder() -> None:
    assert set(ERROR_BUILDERS) == errors.RUNTIME_ERRORS


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", sorted(ERROR_BUILDERS))
def test_each_error_builder_gives_an_error_the_kernel_decodes(name: str, codec: str) -> None:
    error = read_by_kernel(ERROR_BUILDERS[name](), codec)
    assert isinstance(error, Error)
    assert (error.id, error.type, error.traceback) == (7, name, "")
    assert error.message and "\n" not in error.message


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", sorted(DRIVER_EXCEPTIONS))
def test_a_driver_exception_gives_an_error_the_kernel_decodes(name: str, codec: str) -> None:
    error = read_by_kernel(sent.error_reply(3, raised(DRIVER_EXCEPTIONS[name])), codec)
    assert isinstance(error, Error)
    assert (error.id, error.type) == (3, name)
    assert error.message
    assert error.traceback.startswith("Traceback (most recent call last):")


@pytest.mark.parametrize("name", sorted(set(CHILD_MODULES) - {"errors.py"}))
def test_runtime_names_are_used_by_name_not_spelled_again(name: str) -> None:
    """No runtime error name is written as a string literal outside errors.py."""
    spelled = {
        node.value
        for node in ast.walk(child_module(name))
        if isinstance(node, ast.Constant) and node.value in errors.RUNTIME_ERRORS
    }
    assert spelled == set()


def test_error_name_is_what_clients_see() -> None:
    assert error_name(OperationFailed(errors.NOT_ATTACHED, "x")) == "NotAttached"
    assert error_name(OperationFailed("dir_volumes.QuotaExceeded", "x")) == (
        "dir_volumes.QuotaExceeded"
    )
    assert error_name(CallTimeout("late")) == "CallTimeout"
    assert error_name(DriverCrashed("gone")) == "DriverCrashed"


def test_the_child_reads_call_fields_where_the_kernel_puts_them() -> None:
    """The trailing fields the runtime reads by index, in ``Call``'s order."""
    names = [field.name for field in msgspec.structs.fields(Call)]
    assert names.index("op_id") + 1 == sent.CALL_OP_ID  # +1: the tag comes first
    assert names.index("epoch") + 1 == sent.CALL_EPOCH
    full = msgspec.msgpack.decode(msgspec.msgpack.encode(Call(1, "r", "op", {}, 0.0, "x-1", 9)))
    assert (full[sent.CALL_OP_ID], full[sent.CALL_EPOCH]) == ("x-1", 9)
