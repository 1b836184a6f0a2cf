"""Which operations say they return a value the wire codec cannot carry.

Read from what ``describe`` shows (the signature text the runtime sends in
``Ready``) and from the bundle's source, never by running it: a name in a
return annotation is carried when it is one of the types docs/protocol.md
("Values") lists, or a class of the bundle's ``src/`` that is a dataclass, an
attrs class, an ``Enum``, a ``NamedTuple`` or a ``TypedDict``. Any other
class of ``src/``, and the known others (``Path``, iterators, callables...),
fail the call with ``UnencodableResult`` when returned; a name defined
elsewhere cannot be judged from here and is said so.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from typing import Final

CARRIED: Final = frozenset(
    {
        "None", "NoneType", "bool", "int", "float", "str", "bytes", "bytearray",
        "memoryview", "list", "tuple", "set", "frozenset", "dict", "datetime", "date",
        "time", "timedelta", "UUID", "Decimal", "Any", "object", "Optional", "Union",
        "List", "Dict", "Tuple", "Set", "FrozenSet", "Sequence", "MutableSequence",
        "Mapping", "MutableMapping", "AbstractSet", "MutableSet", "Literal", "Annotated",
        "Enum", "IntEnum", "StrEnum", "Flag", "IntFlag", "NamedTuple", "TypedDict",
        "Self", "NoReturn", "Never",
    }
)  # fmt: skip
NOT_CARRIED: Final = frozenset(
    {
        "Iterator", "Iterable", "Generator", "AsyncIterator", "AsyncIterable",
        "AsyncGenerator", "Callable", "Coroutine", "Awaitable", "Path", "PosixPath",
        "PurePath", "PurePosixPath", "complex", "type", "Type", "socket", "IPv4Address",
        "IPv6Address", "IPv4Network", "IPv6Network", "Pattern", "Match", "Future", "Task",
        "Queue", "Exception", "BaseException", "range", "slice", "Struct", "BaseModel",
        "ndarray", "DataFrame",
    }
)  # fmt: skip
_CARRIED_BASES: Final = frozenset(
    {"Enum", "IntEnum", "StrEnum", "Flag", "IntFlag", "NamedTuple", "TypedDict"}
)
_CARRIED_DECORATORS: Final = frozenset(
    {"dataclass", "s", "attrs", "define", "frozen", "mutable", "dataclasses"}
)
_LITERAL = re.compile(r"Literal\[[^\]]*\]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def return_annotation(signature: str) -> str | None:
    """The return annotation in a ``describe`` signature, None when it has none."""
    head, arrow, annotation = signature.rpartition(") -> ")
    return annotation.strip() if arrow and head.startswith("(") else None


def source_classes(files: Mapping[str, bytes]) -> dict[str, bool]:
    """``{class name: carried?}`` for each class defined in ``src/``'s modules."""
    classes: dict[str, bool] = {}
    for path, data in sorted(files.items()):
        if not (path.startswith("src/") and path.endswith(".py")):
            continue
        try:
            tree = ast.parse(data, filename=path)
        except (SyntaxError, ValueError):
            continue  # the start reports it, with the child's own traceback
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = classes.get(node.name, False) or _carried_class(node)
    return classes


def _carried_class(node: ast.ClassDef) -> bool:
    bases = {_last(base) for base in node.bases}
    decorators = {_last(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list}
    return bool(bases & _CARRIED_BASES or decorators & _CARRIED_DECORATORS)


def _last(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):
        return _last(node.value)
    return ""


def problems(annotation: str, classes: Mapping[str, bool]) -> Iterator[str]:
    """What is wrong with returning ``annotation``: one phrase per name."""
    text = _LITERAL.sub("Literal", annotation).replace("'", "").replace('"', "")
    seen: set[str] = set()
    for dotted in _NAME.findall(text):
        name = dotted.rsplit(".", 1)[-1]
        if name in seen or (name in CARRIED and name not in classes):
            continue
        seen.add(name)
        if name in classes:
            if not classes[name]:
                yield (
                    f"{name} is a plain class of src/, which the codec cannot carry; "
                    "make it a dataclass or return a dict"
                )
        elif name in NOT_CARRIED:
            yield f"{name} cannot be carried; return a list, a dict or a str instead"
        else:
            yield (
                f"{name} is not defined in src/; it is carried only if it is a dataclass, "
                "an attrs class or an Enum"
            )
