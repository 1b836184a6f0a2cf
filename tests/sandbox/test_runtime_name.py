"""The driver runtime runs in the child under a private import name, so a
driver's own modules may be called ``protocol``, ``kernel`` or ``sandbox``."""

from __future__ import annotations

import ast

from drivebay.sandbox.runtime_dir import CHILD_MODULES, PACKAGE, ensure_runtime_dir
from tests.helpers import fixture_spec, run, started


def test_a_driver_with_modules_named_like_ours_gets_its_own(tmp_path):
    async def main():
        spec = fixture_spec(tmp_path, name="namesake", entrypoint="namesake:Namesake")
        async with started(spec) as proc:
            await proc.attach("r", {})
            assert await proc.call("r", "owners", {}) == ["namesake"] * 3

    run(main())


def test_the_runtime_copy_is_one_private_package(tmp_path):
    runtime = ensure_runtime_dir(tmp_path / "state")
    assert PACKAGE.startswith("_")
    assert sorted(path.name for path in runtime.iterdir()) == [PACKAGE]


def test_the_child_modules_import_each_other_relatively(tmp_path):
    """A module of the copy that imported ``protocol.…`` would find no such
    package in the child (or the driver's own)."""
    runtime = ensure_runtime_dir(tmp_path / "state") / PACKAGE
    for name in CHILD_MODULES:
        tree = ast.parse((runtime / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] != "protocol", (name, node.module)
            if isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != "protocol" for alias in node.names), name
