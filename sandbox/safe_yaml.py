"""Load YAML from an untrusted bundle without letting it hurt the loader.

On top of PyYAML's safe loader (no Python objects), this loader refuses:

- anchors and aliases, so an alias bomb ("billion laughs") cannot expand;
  bundle files are short and never need them;
- merge keys (``<<``), which only make sense with aliases;
- duplicate keys, which YAML would otherwise resolve silently (last wins);
- mapping keys that are not scalars, and nesting deeper than ``MAX_DEPTH``
  (PyYAML composes recursively; deep nesting would exhaust the stack).

Callers bound the text's size first. Every refusal is a ``BundleError`` whose
line names the bundle, the file and the YAML line.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any, cast

import yaml

from drivebay.sandbox.bundle_errors import reject

MAX_DEPTH = 32

_MERGE_TAG = "tag:yaml.org,2002:merge"
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(yaml.MarkedYAMLError):
    """A well-formed document using a feature bundles may not use."""

    def __init__(self, problem: str, mark: object) -> None:
        super().__init__(problem=problem, problem_mark=cast(yaml.error.Mark, mark))


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                "YAML anchors and aliases (&name, *name) are not allowed; "
                "write each value out in full",
                event.start_mark,
            )
        if self._depth >= MAX_DEPTH:
            raise _Refused(
                f"nested more than {MAX_DEPTH} levels deep; flatten the structure",
                event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_scalar(self, node: yaml.ScalarNode | yaml.MappingNode) -> str:
        value = super().construct_scalar(node)
        if isinstance(value, str) and _SURROGATE.search(value):
            raise _Refused(
                "a \\u escape makes a lone surrogate, which is not a character; "
                "write the character itself",
                node.start_mark,
            )
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise _Refused("expected a mapping", node.start_mark)
        mapping: dict[Hashable, Any] = {}
        first_line: dict[Hashable, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise _Refused(
                    "YAML merge keys (<<) are not allowed; write each field out in full",
                    key_node.start_mark,
                )
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(
                    "a mapping key must be a plain word or a quoted string",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise _Refused(
                    f"duplicate key {key!r} (first at line {first_line[key]}); keep only one",
                    key_node.start_mark,
                )
            first_line[key] = line
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def load_yaml(data: bytes, bundle: str, file: str) -> Any:
    """The one YAML document in ``data`` as plain Python values.

    Raises ``BundleError`` (``<bundle>: <file>: line N: ...``) when ``data``
    is not UTF-8, not YAML, or uses a refused feature.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        reject(
            bundle,
            file,
            f"not UTF-8 text (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8 YAML",
        )
    loader = None
    try:
        loader = _StrictLoader(text)  # checks for unprintable characters
        return loader.get_single_data()
    except _Refused as exc:
        reject(bundle, file, _line(exc), exc.problem or "refused")
    except yaml.MarkedYAMLError as exc:
        line, problem = _where(exc)
        reject(bundle, file, line, f"not valid YAML ({problem}); fix the syntax")
    except yaml.YAMLError as exc:  # ReaderError: a control character in the text
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reject(bundle, file, f"not valid YAML ({detail}); remove control characters")
    finally:
        if loader is not None:
            loader.dispose()


# What the parser was in when it failed that began earlier and was never
# closed: the problem is where it opens, not where its end was looked for.
_UNCLOSED = (
    "while parsing a flow mapping",
    "while parsing a flow sequence",
    "while scanning a quoted",
)


def _where(exc: yaml.MarkedYAMLError) -> tuple[str, str]:
    """``("line N", problem)`` of a syntax error. PyYAML marks the token where
    it noticed the error; for something left unclosed (``{``, ``[``, a quote)
    that is the line after it or the end of the file, so the line named is the
    one that opens it, and the problem says where it was noticed."""
    problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "syntax error"
    opened, noticed = exc.context_mark, exc.problem_mark
    if (
        opened is not None
        and noticed is not None
        and (exc.context or "").startswith(_UNCLOSED)
        and opened.line < noticed.line
    ):
        return f"line {opened.line + 1}", f"{problem} at line {noticed.line + 1}"
    return _line(exc), problem


def _line(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    return f"line {mark.line + 1}" if mark is not None else ""
