"""``drivebay new NAME --category C [--dir D]``: write a working driver to start from.

The bundle holds the manifest, a class with one operation and ``health``,
``resources/messages.yaml`` for its one property, a placeholder ``LICENSE``
the author must fill in, and a test that passes as written
(``tests/test_<module>.py``, on ``drivebay.testing``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drivebay.protocol.errors import RequestError
from drivebay.sandbox.bundle_errors import quoted
from drivebay.sandbox.manifest_rules import NAME, name_problem

LICENSE_PLACEHOLDER = "REPLACE THIS FILE with the license of your driver"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the driver's name, e.g. nfs-storage")
    parser.add_argument(
        "--category", required=True, help="network, storage, hypervisor or another word"
    )
    parser.add_argument("--dir", metavar="D", help="the directory to write (default: ./NAME)")


def run(args: argparse.Namespace) -> int:
    target = Path(args.dir) if args.dir else Path(args.name)
    for path in write_driver(args.name, args.category, target):
        print(f"wrote {path}")
    print(
        f"{target / 'LICENSE'}: a placeholder; put your driver's license text there "
        "before you ship it (a bundle must carry one)"
    )
    print(f"next: cd {target} && pytest tests/ && drivebay check .")
    return 0


def module_name(name: str) -> str:
    """The Python module of driver ``name``: ``nfs-storage`` -> ``nfs_storage``."""
    return name.replace("-", "_")


def class_name(name: str) -> str:
    """The driver class of ``name``: ``nfs-storage`` -> ``NfsStorage``."""
    return "".join(part.capitalize() for part in name.split("-") if part)


def write_driver(name: str, category: str, target: Path) -> list[Path]:
    """Write the bundle of a new driver into ``target``; return the files written.

    Raises ``RequestError`` (nothing written) when ``name`` or ``category``
    is not valid in a manifest, or ``target`` exists and is not an empty
    directory.
    """
    if problem := name_problem(name):
        raise RequestError(problem)
    if not NAME.fullmatch(category):
        raise RequestError(
            f"{quoted(category)} is not a category; use network, storage, hypervisor "
            "or another lowercase word"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RequestError(
            f"{target} exists and is not an empty directory; choose another --dir "
            "or remove it first"
        )
    module = module_name(name)
    files = {
        "driver.yaml": MANIFEST.format(
            name=name, category=category, module=module, cls=class_name(name)
        ),
        "LICENSE": LICENSE.format(name=name, placeholder=LICENSE_PLACEHOLDER),
        f"src/{module}.py": SOURCE.format(name=name, cls=class_name(name)),
        "resources/messages.yaml": MESSAGES,
        f"tests/test_{module}.py": TEST.format(name=name),
    }
    written = []
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as file:
            file.write(text)
        written.append(path)
    return written


MANIFEST = """\
# The manifest of {name}; every field: docs/drivers.md, "The bundle".
name: {name}
version: 0.1.0
category: {category}
description: What {name} manages, in one line
entrypoint: {module}:{cls}
python: ">=3.11"
dependencies: []    # PEP 508 requirements, installed into this driver's own env
properties:
  - key: greeting
    type: string
    max_length: 100
    label: greeting.label         # texts in resources/messages.yaml
    description: greeting.help
limits: {{memory_mb: 256, call_timeout_s: 30}}
"""

LICENSE = """\
{placeholder}.

A bundle must carry its license text in LICENSE: put the full text of the
license {name} is published under here (for example the Apache License 2.0
or the MIT license), with your copyright line.
"""

SOURCE = '''\
"""{name}: a drivebay driver.

One instance of ``{cls}`` serves one resource; each public method is an
operation (``drivebayctl call RESOURCE greet name=Ada``). See docs/drivers.md.
"""

from __future__ import annotations

from typing import Any


class {cls}:
    """The driver class the manifest's ``entrypoint`` names."""

    @classmethod
    async def health(cls) -> dict[str, Any]:
        """Can the driver work at all? Asked before it runs, then periodically."""
        return {{"ok": True}}

    def __init__(self, resource_id: str, properties: dict[str, Any]) -> None:
        self.resource_id = resource_id
        self.properties = properties

    async def greet(self, name: str) -> str:
        """Greet ``name`` with this resource's greeting."""
        greeting = self.properties.get("greeting", "Hello")
        return f"{{greeting}}, {{name}}!"
'''

MESSAGES = """\
# Labels and descriptions of the properties in driver.yaml (messages.<lang>.yaml per language).
greeting.label: Greeting
greeting.help: The word greet puts before a name; Hello when not set.
"""

TEST = '''\
"""{name} in a real driver process, as the daemon runs it: ``pytest tests/``."""

from drivebay.testing import driver, driver_bundle  # noqa: F401  (pytest fixtures)


def test_greet(driver):  # noqa: F811
    driver.attach("r1", {{"greeting": "Hi"}})
    assert driver.call("r1", "greet", name="Ada") == "Hi, Ada!"


def test_default_greeting_and_health(driver):  # noqa: F811
    driver.attach("r2")
    assert driver.call("r2", "greet", name="Ada") == "Hello, Ada!"
    assert driver.health()["ok"] is True
'''
