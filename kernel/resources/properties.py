"""A resource's property bag against the schema its driver declares.

The kernel checks every bag before it stores a resource or hands it to a
driver (``resource add``, ``resource set``, an upgrade to a version with
another schema), so a driver only ever sees values of the types it declared.

- ``convert_cli`` turns ``key=value`` and ``key:=JSON`` words from the command
  line into values of the declared types;
- ``merge`` applies the changes of ``resource set`` (JSON null removes a key);
- ``validate`` checks a whole bag and returns it normalized (dates as ISO
  strings, keys in schema order).

Both ``convert_cli`` and ``validate`` report every problem at once, one line
each, naming the key and the fix: the operator fixes them all in one go.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from drivebay.protocol.errors import RequestError
from drivebay.sandbox.bundle_errors import quoted, shown
from drivebay.sandbox.manifest_schema import PropertySpec

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1  # drivers receive properties as MessagePack: int64

_INT_TEXT: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE_TEXT: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?P<time>[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_BOOLEANS: Final = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_MAX_SHOWN: Final = 40

_WANT: Final = {
    "string": "a string",
    "number": "a number",
    "boolean": "true or false",
    "date": "a date",
}


class PropertyErrors(RequestError):
    """A property bag does not fit its driver's schema; nothing was changed.

    ``problems`` holds one line per problem (``key: problem; fix``) and
    ``str()`` joins them with newlines: show them all, fix them all, retry.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def validate(
    schema: Sequence[PropertySpec], values: Mapping[str, Any], *, driver: str
) -> dict[str, Any]:
    """``values`` normalized: dates as ISO 8601 strings, keys in schema order.

    Raises ``PropertyErrors`` listing every problem: a value of the wrong
    type or too long, a key the schema of ``driver`` does not declare, a
    required key that is missing.
    """
    specs = {spec.key: spec for spec in schema}
    problems: list[str] = []
    checked: dict[str, Any] = {}
    for key, value in values.items():
        spec = specs.get(key)
        if spec is None:
            problems.append(_unknown(key, specs, driver))
            continue
        normal, problem = _check(spec, value)
        if problem is None:
            checked[key] = normal
        else:
            problems.append(f"{shown(key)}: {problem}")
    for spec in schema:
        if spec.required and spec.key not in values:
            problems.append(f"{spec.key}: required; add {spec.key}=VALUE")
    if problems:
        raise PropertyErrors(problems)
    return {spec.key: checked[spec.key] for spec in schema if spec.key in checked}


def convert_cli(schema: Sequence[PropertySpec], assignments: Sequence[str]) -> dict[str, Any]:
    """The values of command-line words ``key=value`` and ``key:=JSON``.

    ``key=value`` is converted to the declared type of ``key`` (text for a
    key the schema does not declare: ``validate`` reports it); ``key:=JSON``
    is decoded and kept as is (JSON null asks ``merge`` to remove the key).
    Nothing is validated beyond the conversion: ``resource set`` merges the
    result into the stored bag first, then calls ``validate``.

    Raises ``PropertyErrors`` listing every word that does not convert.
    """
    types = {spec.key: spec.type for spec in schema}
    problems: list[str] = []
    converted: dict[str, Any] = {}
    seen: set[str] = set()
    for word in assignments:
        key, is_json, text = _split(word)
        if key is None:
            problems.append(text)
            continue
        if key in seen:
            problems.append(f"{shown(key)}: given more than once; give each key once")
            continue
        seen.add(key)
        value, problem = _from_json(text) if is_json else _from_text(types.get(key), text)
        if problem is None:
            converted[key] = value
        else:
            problems.append(f"{shown(key)}: {problem}")
    if problems:
        raise PropertyErrors(problems)
    return converted


def merge(old: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` with ``changes`` applied, for ``resource set``: a change to None
    (JSON null) removes the key, any other value replaces or adds it."""
    merged = dict(old)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


# -- one value of a declared type -------------------------------------------


def _check(spec: PropertySpec, value: Any) -> tuple[Any, str | None]:
    """``(normalized value, None)``, or ``(None, problem; fix)``."""
    return _CHECKS[spec.type](spec, value)


def _check_string(spec: PropertySpec, value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, _expected(spec, value)
    if _SURROGATE.search(value):
        return None, "not valid text (it holds a lone surrogate); write it as UTF-8 text"
    if spec.max_length is not None and len(value) > spec.max_length:
        return None, f"longer than {spec.max_length} characters ({len(value)})"
    return value, None


def _check_number(spec: PropertySpec, value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, _expected(spec, value)
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"expected a finite number, got {value}; write a number, for example 10"
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        return None, f"out of range; write a number between {INT_MIN} and {INT_MAX}"
    return value, None


def _check_boolean(spec: PropertySpec, value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, bool):
        return None, _expected(spec, value)
    return value, None


def _check_date(spec: PropertySpec, value: Any) -> tuple[Any, str | None]:
    if isinstance(value, datetime.date):  # datetime.datetime too: a subclass
        return value.isoformat(), None
    normal = _iso_date(value) if isinstance(value, str) else None
    if normal is None:
        return None, _expected(spec, value)
    return normal, None


_CHECKS: Final[dict[str, Callable[[PropertySpec, Any], tuple[Any, str | None]]]] = {
    "string": _check_string,
    "number": _check_number,
    "boolean": _check_boolean,
    "date": _check_date,
}


def _iso_date(text: str) -> str | None:
    """``text`` as a normalized ISO 8601 date or date and time, else None.

    The forms taken are ``YYYY-MM-DD`` and ``YYYY-MM-DDTHH:MM[:SS[.ffffff]]``
    with an optional ``Z`` or ``+HH:MM``; ``T`` may be a space. Python alone
    would also take ``20251231``, week dates and offsets with seconds, which
    no operator means and which do not all survive a round trip.
    """
    match = _DATE_TEXT.fullmatch(text)
    if match is None:
        return None
    try:
        if match["time"] is None:
            return datetime.date.fromisoformat(text).isoformat()
        return datetime.datetime.fromisoformat(text).isoformat()
    except ValueError:
        return None


def _expected(spec: PropertySpec, value: Any) -> str:
    return f"expected {_WANT[spec.type]}, got {_show(value)}; {_fix(spec.type, spec.key)}"


def _fix(kind: str, key: str) -> str:
    if kind == "string":
        return f"write text, for example {key}=text"
    if kind == "number":
        return "write a number, for example 10"
    if kind == "boolean":
        return "write true or false"
    return "write an ISO 8601 date, for example 2025-12-31"


def _show(value: Any) -> str:
    """``value`` as an operator wrote it, short: 'text', 10, true, null, a list."""
    if isinstance(value, str):
        if len(value) > _MAX_SHOWN:
            return quoted(value[:_MAX_SHOWN]) + "..."
        return quoted(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and len(str(value)) > _MAX_SHOWN:  # no huge lines
        return "a very long number"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a value of type {type(value).__name__}"


def _unknown(key: str, specs: Mapping[str, PropertySpec], driver: str) -> str:
    head = f"{shown(key)}: unknown property of {driver}"
    if not specs:
        return f"{head}; it declares no properties, remove it"
    close = difflib.get_close_matches(key, list(specs), n=1)
    if close:
        return f"{head}; did you mean {quoted(close[0])}?"
    return f"{head}; its properties are {', '.join(specs)}"


# -- command-line words ------------------------------------------------------


def _split(word: str) -> tuple[str | None, bool, str]:
    """``(key, is JSON, value text)``, or ``(None, False, problem)``."""
    key, equals, text = word.partition("=")
    if not equals:
        return None, False, f"{quoted(word)}: expected key=value or key:=JSON"
    is_json = key.endswith(":")
    key = key.removesuffix(":")
    if not key:
        return None, False, f"{quoted(word)}: no key before '='; write key=value or key:=JSON"
    return key, is_json, text


def _from_text(kind: str | None, text: str) -> tuple[Any, str | None]:
    """``text`` converted to ``kind`` (text itself for an undeclared key)."""
    if kind is None or kind == "string":
        return text, None
    value = _CONVERTERS[kind](text)
    if value is not None:
        return value, None
    fix = "write true, false, yes or no" if kind == "boolean" else _fix(kind, "")
    return None, f"expected {_WANT[kind]}, got {_show(text)}; {fix}"


def _number_text(text: str) -> int | float | None:
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if _FLOAT_TEXT.fullmatch(text):
        return float(text)
    return None


_CONVERTERS: Final[dict[str, Callable[[str], Any]]] = {
    "number": _number_text,
    "boolean": lambda text: _BOOLEANS.get(text.lower()),
    "date": _iso_date,
}


def _from_json(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text, parse_constant=_no_constant), None
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return None, (
            f"not valid JSON after ':=' ({reason}); write JSON such as 10, true or "
            '"text" (quoted for the shell), or use key=value'
        )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
