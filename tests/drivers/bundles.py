"""Start the real bundles of ``drivers/`` in real driver children, for tests."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from drivebay.sandbox.manifest import parse_manifest
from drivebay.sandbox.manifest_schema import Manifest
from drivebay.sandbox.runtime_dir import ensure_runtime_dir
from drivebay.sandbox.spawn import SpawnSpec

DRIVERS = Path(__file__).resolve().parents[2] / "drivers"


def manifest(bundle: str) -> Manifest:
    return parse_manifest((DRIVERS / bundle / "driver.yaml").read_bytes(), bundle)


def bundle_spec(tmp_path: Path, bundle: str) -> SpawnSpec:
    """A spec that runs ``drivers/<bundle>`` as the kernel would, on our interpreter."""
    found = manifest(bundle)
    return SpawnSpec(
        python=Path(sys.executable),
        runtime_dir=ensure_runtime_dir(tmp_path / "state"),
        entrypoint=found.entrypoint,
        driver=found.name,
        version=found.version,
        cwd=tmp_path,
        src=DRIVERS / bundle / "src",
    )


def bundle_copy(tmp_path: Path, bundle: str, version: str) -> Path:
    """A copy of ``drivers/<bundle>`` as ``version`` (its manifest's version
    line rewritten): a second version of an example, for upgrade tests."""
    copy = tmp_path / f"{bundle}-{version}"
    shutil.copytree(DRIVERS / bundle, copy)
    manifest_path = copy / "driver.yaml"
    text = manifest_path.read_text()
    current = manifest(bundle).version
    assert f"version: {current}\n" in text
    manifest_path.write_text(text.replace(f"version: {current}\n", f"version: {version}\n", 1))
    return copy


async def until(check: Callable[[], Awaitable[bool]], deadline: float = 10.0) -> None:
    """Wait until the async ``check()`` is true; fail past the deadline."""
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline}s")
        await asyncio.sleep(0.01)
