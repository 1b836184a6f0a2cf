"""Reading the manifest, ``driver.yaml``: bytes to a validated ``Manifest``.

``parse_manifest`` turns the bytes of ``driver.yaml`` into a frozen
``Manifest`` or raises one ``BundleError`` line naming the field and the fix.
The schema's types are checked by ``msgspec.convert`` (its error paths are
rewritten from ``$.properties[2].type`` to ``properties[2].type``); what msgspec
cannot express (name syntax, PEP 440, entrypoint form, unique keys) is checked
after it, in ``sandbox.manifest_rules``.
"""

from __future__ import annotations

import difflib
import re
from typing import Final, get_args

import msgspec

from drivebay.sandbox.bundle_errors import quoted, reject
from drivebay.sandbox.manifest_rules import check_manifest
from drivebay.sandbox.manifest_schema import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    Limits,
    Manifest,
    PropertySpec,
    PropertyType,
)
from drivebay.sandbox.safe_yaml import load_yaml


def parse_manifest(text: bytes, origin: str) -> Manifest:
    """The ``Manifest`` in ``text``, the bytes of ``driver.yaml``.

    ``origin`` is the bundle's name as dropped (``nfs-storage-1.2.0.zip``); it
    starts every error line. Raises ``BundleError`` on the first problem:
    fix it and drop the bundle again.
    """
    if len(text) > MAX_MANIFEST_BYTES:
        reject(origin, MANIFEST_FILE, "larger than 1 MiB; a manifest is a short text file")
    raw = load_yaml(text, origin, MANIFEST_FILE)
    if raw is None:
        reject(
            origin,
            MANIFEST_FILE,
            "is empty; write the fields name, version, category and entrypoint",
        )
    if not isinstance(raw, dict):
        reject(origin, MANIFEST_FILE, "must be a mapping of fields (name: ..., version: ...)")
    try:
        manifest = msgspec.convert(raw, Manifest)
    except msgspec.ValidationError as exc:
        reject(origin, MANIFEST_FILE, *_explain(str(exc)))
    check_manifest(manifest, origin)
    return manifest


# -- msgspec's messages, in the operator's words --------------------------------

_STRUCTS: Final[dict[str, type[msgspec.Struct]]] = {
    "": Manifest,
    "properties[]": PropertySpec,
    "limits": Limits,
}
_CHOICES: Final = {"properties[].type": get_args(PropertyType)}
_EXAMPLES: Final = {
    "name": "name: my-driver",
    "version": "version: 1.0.0",
    "category": "category: storage",
    "entrypoint": "entrypoint: my_driver:MyDriver",
    "properties[].key": "key: host",
    "properties[].type": "type: string",
}
_WORDS: Final = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
    "date": "a date",
    "datetime": "a date and time",
    "time": "a time",
    "bytes": "binary data",
}
_FIXES: Final = {
    "str": "put the value in quotes",
    "int": "write a whole number, for example 30",
    "float": "write a number, for example 2.5",
    "bool": "write true or false",
    "array": "write a list, for example [a, b]",
    "object": "write a mapping, for example {key: value}",
}
_AT = re.compile(r"(?P<message>.*?)(?: - at `(?P<key>key` in `)?\$(?P<path>[^`]*)`)?", re.DOTALL)
_EXPECTED = re.compile(
    r"Expected `(?P<want>[^`]+)`(?:, got `(?P<got>[^`]+)`)?(?P<rest>.*)", re.DOTALL
)


def _explain(error: str) -> tuple[str, str]:
    """``(field path, problem; fix)`` for one ``msgspec.ValidationError`` text."""
    at = _AT.fullmatch(error)
    assert at is not None  # the pattern matches any string
    message, path = at["message"], (at["path"] or "").removeprefix(".")
    generic = re.sub(r"\[\d+\]", "[]", path)
    if at["key"] is not None:
        return path, "field names must be strings; quote the key"
    if match := re.fullmatch(r"Object missing required field `(.+)`", message, re.DOTALL):
        field = f"{path}.{match[1]}" if path else match[1]
        example = _EXAMPLES.get(f"{generic}.{match[1]}" if generic else match[1])
        hint = f", for example '{example}'" if example else ""
        return field, f"missing required field; add it{hint}"
    if match := re.fullmatch(r"Object contains unknown field `(.+)`", message, re.DOTALL):
        return path, _unknown_field(match[1], _STRUCTS.get(generic, Manifest))
    if match := re.fullmatch(r"Invalid enum value (.+)", message, re.DOTALL):
        choices = ", ".join(_CHOICES.get(generic, ()))
        return path, f"{match[1]} is not one of {choices}"
    if match := _EXPECTED.fullmatch(message):
        return path, _expected(match["want"], match["got"], match["rest"])
    return path, message[:1].lower() + message[1:]


def _unknown_field(name: str, struct: type[msgspec.Struct]) -> str:
    known = struct.__struct_fields__
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown field {quoted(name)}; did you mean {quoted(close[0])}?"
    return f"unknown field {quoted(name)}; known fields are {', '.join(known)}"


def _expected(want: str, got: str | None, rest: str) -> str:
    kinds = [kind for kind in want.split(" | ") if kind != "null"] or ["null"]
    words = " or ".join(_WORDS.get(kind, kind) for kind in kinds)
    if got is None:  # a bound, e.g. "Expected `int` >= 1"
        return f"must be {words}{rest}"
    fix = _FIXES.get(kinds[0], "")
    got_words = "a boolean" if got == "bool" else _WORDS.get(got, got)
    return f"expected {words}, got {got_words}" + (f"; {fix}" if fix else "")
