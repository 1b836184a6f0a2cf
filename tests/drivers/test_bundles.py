"""Every bundle in drivers/ is complete, loads like a dropped bundle, and documents itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from drivebay.kernel.resources.catalog import load_catalog
from drivebay.protocol.hooks import LIFECYCLE_METHODS
from drivebay.sandbox.bundle_reader import read_bundle
from tests.drivers.bundles import DRIVERS

BUNDLES = sorted(path for path in DRIVERS.iterdir() if path.is_dir() and path.name[0] != ".")
REQUIRED_FILES = ("driver.yaml", "LICENSE", "README.md", "resources/messages.yaml")


def _operations(src: Path, entrypoint: str) -> list[str]:
    """The public methods of the entrypoint class, read from its source."""
    module, _, class_name = entrypoint.partition(":")
    tree = ast.parse((src / f"{module}.py").read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    return [
        node.name
        for node in cls.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.name.startswith("_")
        and node.name not in LIFECYCLE_METHODS
    ]


def _imported_modules(src: Path) -> set[str]:
    found: set[str] = set()
    for path in src.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found


def test_the_demo_covers_each_category_and_a_requires():
    manifests = {path.name: read_bundle(path).manifest for path in BUNDLES}
    assert {m.category for m in manifests.values()} >= {"network", "storage", "hypervisor"}
    assert any(m.requires for m in manifests.values())
    for name, found in manifests.items():
        for required in found.requires:
            assert required in manifests, f"{name} requires {required}, which is not in drivers/"
            assert manifests[required].category == found.category, (
                f"{name} requires {required} of another category; requires orders one category"
            )


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_bundle_is_complete_and_loads(bundle):
    for name in REQUIRED_FILES:
        assert (bundle / name).is_file(), f"{bundle.name}: {name} is missing"
    found = read_bundle(bundle).manifest  # the kernel's own reader: layout and manifest
    assert found.name == bundle.name
    assert found.version.startswith("1.") and found.python == ">=3.11"
    assert found.description and found.dependencies == ()
    limits = found.limits
    assert limits.memory_mb and limits.open_files and limits.call_timeout_s
    assert "Apache License, Version 2.0" in (bundle / "LICENSE").read_text()


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_every_property_has_english_messages(bundle):
    found = read_bundle(bundle).manifest
    messages = yaml.safe_load((bundle / "resources" / "messages.yaml").read_text())
    wanted = set()
    for spec in found.properties:
        assert spec.label and spec.description, f"{bundle.name}: {spec.key} needs both keys"
        wanted |= {spec.label, spec.description}
    assert set(messages) == wanted
    assert all(isinstance(text, str) and text.strip() for text in messages.values())
    catalog = load_catalog(bundle, "en_US.UTF-8")  # what describe and the CLI show
    assert all(catalog.text(key) == messages[key] for key in wanted)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_readme_documents_every_operation(bundle):
    found = read_bundle(bundle).manifest
    readme = (bundle / "README.md").read_text()
    assert f"# {found.name}" in readme and "drivebayctl call " in readme
    operations = _operations(bundle / "src", found.entrypoint)
    assert operations
    for operation in operations:
        assert f"`{operation}(" in readme, f"{bundle.name}: README does not document {operation}"
    for spec in found.properties:
        assert f"`{spec.key}`" in readme, f"{bundle.name}: README does not describe {spec.key}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda path: path.name)
def test_standard_library_only(bundle):
    """No dependencies, so the bundles build offline: only stdlib and their own modules."""
    src = bundle / "src"
    own = {path.stem for path in src.glob("*.py")}
    foreign = _imported_modules(src) - own - set(sys.stdlib_module_names) - {"__future__"}
    assert not foreign, f"{bundle.name} imports {sorted(foreign)}; declare or remove them"
