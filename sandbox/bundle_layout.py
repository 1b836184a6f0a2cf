"""What a bundle must hold, checked on its files once they are safely read.

At the root: ``driver.yaml`` (parsed into a ``Manifest``), ``LICENSE`` and
``src/`` holding the entrypoint's module; optionally ``lib/`` with wheel files
only, ``resources/``, and ``META-INF/signature.json`` (written by ``drivebay
sign``; nothing else may be in ``META-INF/``). Other files are carried along
untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from drivebay.sandbox.bundle_errors import quoted, reject
from drivebay.sandbox.manifest import parse_manifest
from drivebay.sandbox.manifest_schema import MANIFEST_FILE, Manifest

LICENSE_FILE: Final = "LICENSE"
SRC_DIR: Final = "src"
LIB_DIR: Final = "lib"
META_DIR: Final = "META-INF"
SIGNATURE_FILE: Final = f"{META_DIR}/signature.json"


@dataclass(frozen=True, slots=True)
class BundleFiles:
    """A bundle read into memory and verified, ready for the store.

    ``files`` maps each regular file's path (relative, ``/``-separated) to its
    bytes; directories are implied by the paths. ``name`` is the bundle as
    dropped (``nfs-storage-1.2.0.zip``), ``source`` its full path.
    """

    name: str
    source: Path
    files: dict[str, bytes]
    manifest: Manifest

    @property
    def content(self) -> dict[str, bytes]:
        """Every file but the signature: what is stored, run and signed."""
        return {path: data for path, data in self.files.items() if path != SIGNATURE_FILE}

    @property
    def wheels(self) -> list[str]:
        """The paths of the wheels in ``lib/``, sorted."""
        return sorted(path for path in self.files if path.startswith(f"{LIB_DIR}/"))


def check_layout(bundle: str, source: Path, files: dict[str, bytes], dirs: set[str]) -> BundleFiles:
    """``BundleFiles`` for a bundle whose files are ``files`` (plus empty ``dirs``).

    Raises ``BundleError`` when a path is both a file and a directory, a
    required file is missing, ``lib/`` holds anything but wheels, the manifest
    is invalid, or the entrypoint's module is not under ``src/``.
    """
    _check_tree(bundle, files, dirs)
    if MANIFEST_FILE not in files:
        reject(bundle, MANIFEST_FILE, _missing_manifest(files))
    if LICENSE_FILE not in files:
        reject(bundle, LICENSE_FILE, "missing at the bundle root; add the driver's license text")
    if SRC_DIR not in dirs and not any(path.startswith(f"{SRC_DIR}/") for path in files):
        reject(bundle, f"{SRC_DIR}/", "missing at the bundle root; put the driver's code in src/")
    for path in sorted(files.keys() | dirs):
        if path.startswith(f"{LIB_DIR}/"):
            _check_lib_entry(bundle, path, path in files)
        elif path.startswith(f"{META_DIR}/") and path != SIGNATURE_FILE:
            reject(
                bundle,
                path,
                f"{META_DIR}/ holds only signature.json, written by drivebay sign; "
                "move this elsewhere in the bundle",
            )
    manifest = parse_manifest(files[MANIFEST_FILE], bundle)
    module = manifest.module.replace(".", "/")
    candidates = (f"{SRC_DIR}/{module}.py", f"{SRC_DIR}/{module}/__init__.py")
    if not any(candidate in files for candidate in candidates):
        reject(
            bundle,
            MANIFEST_FILE,
            "entrypoint",
            f"module {quoted(manifest.module)} not found; add {candidates[0]} or {candidates[1]}",
        )
    return BundleFiles(
        name=bundle, source=source, files=dict(sorted(files.items())), manifest=manifest
    )


def _check_tree(bundle: str, files: dict[str, bytes], dirs: set[str]) -> None:
    """Every parent of a file must be a directory, never a file too."""
    for path in sorted(files):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in files:
                reject(bundle, parent, "is both a file and a directory; keep one")
    for path in sorted(dirs):
        if path in files:
            reject(bundle, path, "is both a file and a directory; keep one")


_WHEEL_NAME = re.compile(r"[^-/]+-[^-/]+(?:-[0-9][^-/]*)?-[^-/]+-[^-/]+-[^-/]+\.whl")


def _check_lib_entry(bundle: str, path: str, is_file: bool) -> None:
    name = path.removeprefix(f"{LIB_DIR}/")
    if not is_file or "/" in name or not name.endswith(".whl"):
        reject(bundle, path, "lib/ holds only wheel files (*.whl), no folders; remove it")
    if not _WHEEL_NAME.fullmatch(name):
        reject(
            bundle,
            path,
            "not a wheel file name (name-version-python-abi-platform.whl); "
            "keep the name pip or uv gave it",
        )


def _missing_manifest(files: dict[str, bytes]) -> str:
    tops = {path.split("/", 1)[0] for path in files}
    if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST_FILE}" in files:
        top = next(iter(tops))
        return (
            f"missing at the bundle root; everything is inside '{top}/', "
            "so zip the folder's contents, not the folder"
        )
    return "missing at the bundle root; add the driver's manifest"
