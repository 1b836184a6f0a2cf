"""Build driver bundles at test time: ``make_bundle`` writes a minimal valid
bundle directory, ``zip_bundle`` packs one. Shared by every test that needs a
bundle; nothing here touches drivebay itself."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import yaml

LICENSE_TEXT = "Apache-2.0\n"


def driver_source(class_name: str) -> str:
    """A small working driver class: health, one instance per resource, one operation."""
    return f'''"""A demo driver written by tests.sandbox.bundles."""


class {class_name}:
    @classmethod
    async def health(cls) -> dict:
        return {{"ok": True}}

    def __init__(self, resource_id: str, properties: dict) -> None:
        self.resource_id = resource_id
        self.properties = properties

    async def echo(self, text: str) -> dict:
        return {{"resource": self.resource_id, "text": text}}
'''


def make_bundle(
    root: Path,
    name: str = "demo",
    version: str = "1.0.0",
    manifest_extra: dict[str, Any] | None = None,
    src: dict[str, str] | None = None,
) -> Path:
    """Write the bundle directory ``root/<name>-<version>/`` and return its path.

    The manifest names the entrypoint ``<name_with_underscores>:<Name>Driver``
    (``demo:DemoDriver``); ``manifest_extra`` adds or replaces fields (a value
    of None removes the field). ``src`` maps paths under ``src/`` to their
    text; by default it holds the entrypoint's module with a working driver.
    """
    module = name.replace("-", "_")
    class_name = "".join(part.title() for part in name.split("-")) + "Driver"
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "category": "storage",
        "description": f"{name}, a test driver",
        "entrypoint": f"{module}:{class_name}",
    }
    for key, value in (manifest_extra or {}).items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    bundle = root / f"{name}-{version}"
    (bundle / "src").mkdir(parents=True)
    (bundle / "driver.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (bundle / "LICENSE").write_text(LICENSE_TEXT)
    sources = {f"{module}.py": driver_source(class_name)} if src is None else src
    for relative, text in sources.items():
        target = bundle / "src" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return bundle


def zip_bundle(directory: Path) -> Path:
    """Zip the bundle ``directory`` (its contents at the zip's root) next to it.

    Returns ``<directory>.zip``. Entries are sorted and deflated.
    """
    target = directory.parent / f"{directory.name}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            archive.write(path, path.relative_to(directory).as_posix())
    return target
