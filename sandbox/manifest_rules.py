"""The manifest rules msgspec's types cannot state.

Run on a ``Manifest`` that already has the right types: name and category
syntax, PEP 440 version in normal form, ``module:Class`` entrypoint, driver
names in ``requires``, version specifiers and requirements, property keys,
operation names in ``idempotent``.
Each broken rule raises one ``BundleError`` line with the field path and fix.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator
from typing import Final

from drivebay.protocol.hooks import LIFECYCLE_METHODS
from drivebay.sandbox.bundle_errors import quoted, reject
from drivebay.sandbox.manifest_schema import Manifest, PropertySpec
from drivebay.sandbox.pep440 import parse_version, requirement_problem, specifier_problem

NAME: Final = re.compile(r"[a-z][a-z0-9-]*")
MAX_NAME_LENGTH: Final = 64
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRYPOINT: Final = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*:{_IDENTIFIER}")
_PROPERTY_KEY: Final = re.compile(_IDENTIFIER)
_FILE: Final = "driver.yaml"


def name_problem(name: str) -> str | None:
    """None when ``name`` is a valid driver name, else the problem and its fix."""
    if NAME.fullmatch(name) and len(name) <= MAX_NAME_LENGTH:
        return None
    return (
        f"{quoted(name)} is not a driver name; use lowercase letters, digits and '-', "
        f"starting with a letter, at most {MAX_NAME_LENGTH} characters (for example nfs-storage)"
    )


def check_manifest(manifest: Manifest, origin: str) -> None:
    """Raise ``BundleError`` for the first rule ``manifest`` breaks."""
    for field, problem in _problems(manifest):
        reject(origin, _FILE, field, problem)


def _problems(manifest: Manifest) -> Iterator[tuple[str, str]]:
    """``(field path, problem; fix)`` for each broken rule, in field order."""
    if problem := name_problem(manifest.name):
        yield "name", problem
    yield from _version_problems(manifest.version)
    if not NAME.fullmatch(manifest.category):
        yield (
            "category",
            f"{quoted(manifest.category)} is not a category; use network, storage, "
            "hypervisor or another lowercase word",
        )
    if not _ENTRYPOINT.fullmatch(manifest.entrypoint):
        yield (
            "entrypoint",
            f"{quoted(manifest.entrypoint)} is not of the form module:Class "
            "(for example nfs_driver:NfsDriver)",
        )
    yield from _requires_problems(manifest)
    if manifest.python is not None and (problem := specifier_problem(manifest.python)):
        yield (
            "python",
            f"{quoted(manifest.python)} is not a version specifier: {problem}; "
            "write one like '>=3.11'",
        )
    for index, dependency in enumerate(manifest.dependencies):
        if problem := requirement_problem(dependency):
            yield (
                f"dependencies[{index}]",
                f"{quoted(dependency)} is not an allowed requirement: {problem}; "
                "write one like 'pyyaml>=6,<7'",
            )
    yield from _property_problems(manifest.properties)
    yield from _idempotent_problems(manifest.idempotent)


def _version_problems(version: str) -> Iterator[tuple[str, str]]:
    parsed = parse_version(version)
    if parsed is None:
        yield "version", f"{quoted(version)} is not a PEP 440 version (for example 1.2.0)"
    elif parsed.normal != version:
        yield (
            "version",
            f"{quoted(version)} is not in PEP 440 normal form; write {quoted(parsed.normal)}",
        )


def _requires_problems(manifest: Manifest) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for index, required in enumerate(manifest.requires):
        field = f"requires[{index}]"
        if problem := name_problem(required):
            yield field, problem
        elif required == manifest.name:
            yield field, f"a driver cannot require itself; remove {quoted(required)}"
        elif required in seen:
            yield field, f"{quoted(required)} is listed twice; keep only one"
        seen.add(required)


def _property_problems(properties: tuple[PropertySpec, ...]) -> Iterator[tuple[str, str]]:
    first: dict[str, int] = {}
    for index, spec in enumerate(properties):
        field = f"properties[{index}]"
        if not _PROPERTY_KEY.fullmatch(spec.key):
            yield (
                f"{field}.key",
                f"{quoted(spec.key)} is not a property key; use letters, digits and '_', "
                "not starting with a digit",
            )
        elif spec.key in first:
            yield (
                f"{field}.key",
                f"{quoted(spec.key)} is already defined by properties[{first[spec.key]}]; "
                "rename or remove one",
            )
        first.setdefault(spec.key, index)
        if spec.max_length is not None and spec.type != "string":
            yield f"{field}.max_length", f"applies to type string only, not {spec.type}; remove it"


def operation_problem(name: str) -> str | None:
    """None when ``name`` can be an operation of a driver class, else why not."""
    if not _PROPERTY_KEY.fullmatch(name) or keyword.iskeyword(name):
        return "is not an operation name; use a Python identifier (for example resize)"
    if name.startswith("_"):
        return "starts with '_', which makes a method private, never an operation; rename it"
    if name in LIFECYCLE_METHODS:
        return "is a lifecycle hook's reserved name, never an operation; remove it"
    return None


def _idempotent_problems(operations: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for index, operation in enumerate(operations):
        field = f"idempotent[{index}]"
        if problem := operation_problem(operation):
            yield field, f"{quoted(operation)} {problem}"
        elif operation in seen:
            yield field, f"{quoted(operation)} is listed twice; keep only one"
        seen.add(operation)
