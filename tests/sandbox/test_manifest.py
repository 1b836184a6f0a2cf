"""driver.yaml: the schema, each rejection as its exact line, and the YAML defenses."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from drivebay.protocol.errors import BundleError
from drivebay.sandbox.manifest import parse_manifest
from drivebay.sandbox.manifest_schema import Limits, Manifest, PropertySpec

BASE: dict[str, Any] = {
    "name": "nfs-storage",
    "version": "1.2.0",
    "category": "storage",
    "entrypoint": "nfs_driver:NfsDriver",
}


def manifest_text(**fields: Any) -> bytes:
    """The base manifest with ``fields`` added or replaced (None removes one)."""
    data = {**BASE, **fields}
    return yaml.safe_dump({k: v for k, v in data.items() if v is not None}).encode()


def rejection(text: bytes, origin: str = "x.zip") -> str:
    with pytest.raises(BundleError) as caught:
        parse_manifest(text, origin)
    return str(caught.value)


def test_full_manifest_from_the_architecture_document() -> None:
    text = b"""
name: nfs-storage
version: 1.2.0
category: storage
description: NFS exports as volumes
entrypoint: nfs_driver:NfsDriver
requires: [base-storage]
python: ">=3.11"
dependencies: ["pyyaml==5.4.1"]
properties:
  - {key: host, type: string, required: true, max_length: 255,
     label: host.label, description: host.help}
  - {key: size_gb, type: number, required: false}
  - {key: thin, type: boolean}
  - {key: expires, type: date}
limits: {memory_mb: 512, open_files: 256, call_timeout_s: 30}
"""
    manifest = parse_manifest(text, "nfs-storage-1.2.0.zip")
    assert manifest == Manifest(
        name="nfs-storage",
        version="1.2.0",
        category="storage",
        description="NFS exports as volumes",
        entrypoint="nfs_driver:NfsDriver",
        requires=("base-storage",),
        python=">=3.11",
        dependencies=("pyyaml==5.4.1",),
        properties=(
            PropertySpec("host", "string", True, 255, "host.label", "host.help"),
            PropertySpec("size_gb", "number", False),
            PropertySpec("thin", "boolean"),
            PropertySpec("expires", "date"),
        ),
        limits=Limits(memory_mb=512, open_files=256, call_timeout_s=30.0),
    )
    assert (manifest.module, manifest.class_name) == ("nfs_driver", "NfsDriver")


def test_minimal_manifest_takes_defaults() -> None:
    manifest = parse_manifest(manifest_text(), "x")
    assert manifest.requires == () and manifest.python is None and manifest.limits == Limits()


def test_issue_example_property_type() -> None:
    props = [
        {"key": "a", "type": "string"},
        {"key": "b", "type": "date"},
        {"key": "c", "type": "int"},
    ]
    assert rejection(manifest_text(properties=props), "nfs-storage-1.2.0.zip") == (
        "nfs-storage-1.2.0.zip: driver.yaml: properties[2].type: "
        "'int' is not one of string, number, boolean, date"
    )


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        (
            {"entrypiont": "a:B", "entrypoint": None},
            "x.zip: driver.yaml: unknown field 'entrypiont'; did you mean 'entrypoint'?",
        ),
        (
            {"colour": "red"},
            "x.zip: driver.yaml: unknown field 'colour'; known fields are name, version, "
            "category, entrypoint, description, requires, python, dependencies, properties, "
            "limits, idempotent",
        ),
        (
            {"properties": [{"key": "host", "type": "string", "lable": "l"}]},
            "x.zip: driver.yaml: properties[0]: unknown field 'lable'; did you mean 'label'?",
        ),
        (
            {"limits": {"memory": 5}},
            "x.zip: driver.yaml: limits: unknown field 'memory'; did you mean 'memory_mb'?",
        ),
        (
            {"entrypoint": None},
            "x.zip: driver.yaml: entrypoint: missing required field; "
            "add it, for example 'entrypoint: my_driver:MyDriver'",
        ),
        (
            {"properties": [{"key": "host"}]},
            "x.zip: driver.yaml: properties[0].type: missing required field; "
            "add it, for example 'type: string'",
        ),
        (
            {"version": "1.2.x"},
            "x.zip: driver.yaml: version: '1.2.x' is not a PEP 440 version (for example 1.2.0)",
        ),
        (
            {"version": 1.2},
            "x.zip: driver.yaml: version: expected a string, got a number; put the value in quotes",
        ),
        (
            {"version": "1.0-RC1"},
            "x.zip: driver.yaml: version: '1.0-RC1' is not in PEP 440 normal form; write '1.0rc1'",
        ),
        (
            {"name": "NFS_storage"},
            "x.zip: driver.yaml: name: 'NFS_storage' is not a driver name; use lowercase "
            "letters, digits and '-', starting with a letter, at most 64 characters "
            "(for example nfs-storage)",
        ),
        (
            {"name": True},
            "x.zip: driver.yaml: name: expected a string, got a boolean; put the value in quotes",
        ),
        (
            {"category": "Block Storage"},
            "x.zip: driver.yaml: category: 'Block Storage' is not a category; use network, "
            "storage, hypervisor or another lowercase word",
        ),
        (
            {"entrypoint": "nfs_driver.NfsDriver"},
            "x.zip: driver.yaml: entrypoint: 'nfs_driver.NfsDriver' is not of the form "
            "module:Class (for example nfs_driver:NfsDriver)",
        ),
        (
            {"requires": "base-storage"},
            "x.zip: driver.yaml: requires: expected a list, got a string; "
            "write a list, for example [a, b]",
        ),
        (
            {"requires": ["base", "nfs-storage"]},
            "x.zip: driver.yaml: requires[1]: a driver cannot require itself; remove 'nfs-storage'",
        ),
        (
            {"requires": ["base", "base"]},
            "x.zip: driver.yaml: requires[1]: 'base' is listed twice; keep only one",
        ),
        (
            {"python": "3.11+"},
            "x.zip: driver.yaml: python: '3.11+' is not a version specifier: '3.11+' has no "
            "comparison operator (==, >=, ~=, ...); write one like '>=3.11'",
        ),
        (
            {"dependencies": ["pyyaml>=6", "requests>=2.x"]},
            "x.zip: driver.yaml: dependencies[1]: 'requests>=2.x' is not an allowed requirement: "
            "'2.x' is not a PEP 440 version; write one like 'pyyaml>=6,<7'",
        ),
        (
            {"dependencies": ["tool @ https://example.com/tool-1.0-py3-none-any.whl"]},
            "x.zip: driver.yaml: dependencies[0]: 'tool @ https://example.com/tool-1.0-py3-none-"
            "any.whl' is not an allowed requirement: direct references (name @ url) are not "
            "allowed, wheels go in lib/; write one like 'pyyaml>=6,<7'",
        ),
        (
            {"properties": [{"key": "host", "type": "string"}, {"key": "host", "type": "date"}]},
            "x.zip: driver.yaml: properties[1].key: 'host' is already defined by properties[0]; "
            "rename or remove one",
        ),
        (
            {"properties": [{"key": "size", "type": "number", "max_length": 3}]},
            "x.zip: driver.yaml: properties[0].max_length: applies to type string only, "
            "not number; remove it",
        ),
        (
            {"properties": [{"key": "host", "type": "string", "max_length": 0}]},
            "x.zip: driver.yaml: properties[0].max_length: must be an integer >= 1",
        ),
        (
            {"properties": [{"key": "host", "type": "string", "required": "yes"}]},
            "x.zip: driver.yaml: properties[0].required: expected true or false, got a string; "
            "write true or false",
        ),
        (
            {"idempotent": "resize"},
            "x.zip: driver.yaml: idempotent: expected a list, got a string; "
            "write a list, for example [a, b]",
        ),
        (
            {"idempotent": ["resize", "grow-fast"]},
            "x.zip: driver.yaml: idempotent[1]: 'grow-fast' is not an operation name; "
            "use a Python identifier (for example resize)",
        ),
        (
            {"idempotent": ["class"]},
            "x.zip: driver.yaml: idempotent[0]: 'class' is not an operation name; "
            "use a Python identifier (for example resize)",
        ),
        (
            {"idempotent": ["_resize"]},
            "x.zip: driver.yaml: idempotent[0]: '_resize' starts with '_', which makes a "
            "method private, never an operation; rename it",
        ),
        (
            {"idempotent": ["resize", "reconcile_operation"]},
            "x.zip: driver.yaml: idempotent[1]: 'reconcile_operation' is a lifecycle hook's "
            "reserved name, never an operation; remove it",
        ),
        (
            {"idempotent": ["resize", "status", "resize"]},
            "x.zip: driver.yaml: idempotent[2]: 'resize' is listed twice; keep only one",
        ),
        (
            {"limits": {"memory_mb": -1}},
            "x.zip: driver.yaml: limits.memory_mb: must be an integer >= 1",
        ),
        (
            {"limits": {"call_timeout_s": float("inf")}},
            "x.zip: driver.yaml: limits.call_timeout_s: must be a number <= 1000000000.0",
        ),
    ],
)
def test_rejected_field(fields: dict[str, Any], line: str) -> None:
    assert rejection(manifest_text(**fields)) == line


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            b'a: &a ["lol", "lol"]\nb: &b [*a, *a]\nc: [*b, *b]\n',
            "x: driver.yaml: line 1: YAML anchors and aliases (&name, *name) are not allowed; "
            "write each value out in full",
        ),
        (
            b"name: a\nversion: 1.0.0\nname: b\n",
            "x: driver.yaml: line 3: duplicate key 'name' (first at line 1); keep only one",
        ),
        (
            b"limits: {<<: {memory_mb: 5}}\n",
            "x: driver.yaml: line 1: YAML merge keys (<<) are not allowed; "
            "write each field out in full",
        ),
        (
            b"? [a, b]\n: c\n",
            "x: driver.yaml: line 1: a mapping key must be a plain word or a quoted string",
        ),
        (
            b"[" * 100_000,
            "x: driver.yaml: line 1: nested more than 32 levels deep; flatten the structure",
        ),
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "x: driver.yaml: not UTF-8 text (byte 0x89 at offset 0); save it as UTF-8 YAML",
        ),
        (
            b"name: a\x00",
            "x: driver.yaml: not valid YAML (unacceptable character #x0000: special characters "
            "are not allowed); remove control characters",
        ),
        (
            b"name: a: b\n",
            "x: driver.yaml: line 1: not valid YAML (mapping values are not allowed here); "
            "fix the syntax",
        ),
        (
            b"name: a\n---\nname: b\n",
            "x: driver.yaml: line 2: not valid YAML (expected a single document in the stream, "
            "but found another document); fix the syntax",
        ),
        (
            b'description: "\\ud800"\n',
            "x: driver.yaml: line 1: a \\u escape makes a lone surrogate, which is not a "
            "character; write the character itself",
        ),
        (b"", "x: driver.yaml: is empty; write the fields name, version, category and entrypoint"),
        (b"- name\n", "x: driver.yaml: must be a mapping of fields (name: ..., version: ...)"),
        (b"1: one\n", "x: driver.yaml: field names must be strings; quote the key"),
        (
            b"#" * (1 << 20) + b"#",
            "x: driver.yaml: larger than 1 MiB; a manifest is a short text file",
        ),
    ],
)
def test_rejected_yaml(text: bytes, line: str) -> None:
    assert rejection(text, "x") == line


def test_hostile_names_stay_on_one_line() -> None:
    line = rejection(manifest_text(**{"bad\nkey": 1}), "x")
    assert (
        line == "x: driver.yaml: unknown field 'bad\\nkey'; known fields are name, version, "
        "category, entrypoint, description, requires, python, dependencies, properties, limits, "
        "idempotent"
    )


def test_idempotent_operations_are_read() -> None:
    manifest = parse_manifest(manifest_text(idempotent=["resize", "status"]), "x.zip")
    assert manifest.idempotent == ("resize", "status")
    assert parse_manifest(manifest_text(), "x.zip").idempotent == ()
