"""Start the real bundles of ``drivers/`` in real driver children, for tests."""

from __future__ import annotations

import asyncio
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


async def until(check: Callable[[], Awaitable[bool]], deadline: float = 10.0) -> None:
    """Wait until the async ``check()`` is true; fail past the deadline."""
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline}s")
        await asyncio.sleep(0.01)
