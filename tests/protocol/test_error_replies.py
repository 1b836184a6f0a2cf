"""The driver runtime's error replies: one builder each, names shared with the
kernel, and every builder's output is an ``Error`` the kernel decodes."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivebay.protocol import errors, runtime
from drivebay.protocol.child_codec import ChildCodec
from drivebay.protocol.codec import MessageCodec
from drivebay.protocol.errors import CallTimeout, DriverCrashed, OperationFailed, error_name
from drivebay.protocol.messages import Error, ToKernel


class Broken(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


BUILDERS: dict[str, Callable[[], list[Any]]] = {
    errors.CANCELLED: lambda: runtime.cancelled(7),
    errors.DRAINING: lambda: runtime.draining(7),
    errors.NOT_ATTACHED: lambda: runtime.not_attached(7, "vol-1"),
    errors.ALREADY_ATTACHED: lambda: runtime.already_attached(7, "vol-1"),
    errors.UNKNOWN_OPERATION: lambda: runtime.unknown_operation(7, "grow", ["shrink", "list"]),
    errors.RESULT_TOO_LARGE: lambda: runtime.result_too_large(7, 20_000_000, 16_777_216),
    errors.UNENCODABLE_RESULT: lambda: runtime.unencodable_result(
        7, object(), TypeError("cannot encode objects of type builtins.object \udcff")
    ),
}
DRIVER_EXCEPTIONS: dict[str, BaseException] = {
    "ValueError": ValueError("bad size"),
    "tests.protocol.test_error_replies.Broken": Broken(),
    "FileNotFoundError": OSError(2, "No such file", "/tmp/\udcff"),  # os.fsdecode made it
    "MemoryError": MemoryError(),
}


def decoded(message: list[Any], codec: str) -> Error:
    """``message`` as the kernel reads it from a child on ``codec``."""
    kernel: MessageCodec[ToKernel] = MessageCodec(ToKernel, "driver")
    (received,) = kernel.feed(ChildCodec(force=codec).encode(message))
    assert isinstance(received, Error)
    return received


def test_every_runtime_error_name_has_its_builder() -> None:
    assert set(BUILDERS) == errors.RUNTIME_ERRORS


@pytest.mark.parametrize("codec", ["msgspec", "stdlib"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_each_builder_gives_an_error_the_kernel_decodes(name: str, codec: str) -> None:
    error = decoded(BUILDERS[name](), codec)
    assert (error.id, error.type, error.traceback) == (7, name, "")
    assert error.message and "\n" not in error.message


@pytest.mark.parametrize("codec", ["msgspec", "stdlib"])
@pytest.mark.parametrize("name", sorted(DRIVER_EXCEPTIONS))
def test_a_driver_exception_gives_an_error_the_kernel_decodes(name: str, codec: str) -> None:
    error = decoded(runtime.error_reply(3, raised(DRIVER_EXCEPTIONS[name])), codec)
    assert (error.id, error.type) == (3, name)
    assert error.message
    assert error.traceback.startswith("Traceback (most recent call last):")


def test_the_error_layout_is_written_once_in_the_runtime() -> None:
    """Every ``["error", ...]`` the runtime sends comes from ``error_message``."""
    tree = ast.parse(Path(runtime.__file__).read_text())
    literals = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.List)
        and node.elts
        and isinstance(node.elts[0], ast.Constant)
        and node.elts[0].value == "error"
    ]
    (builder,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "error_message"
    ]
    assert [node.lineno for node in literals] == [builder.body[-1].lineno]


def test_runtime_names_are_used_by_name_not_spelled_again() -> None:
    """No runtime error name is written as a string literal outside errors.py."""
    tree = ast.parse(Path(runtime.__file__).read_text())
    spelled = {
        node.value
        for node in ast.walk(tree)
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
