"""The bounds on one bundle, and the bookkeeping that enforces them.

``ReadLimits`` is what the kernel configures; ``Budget`` counts entries and
bytes as the reader meets them and rejects the bundle at the first one over;
``member_path`` is the one check every path inside a bundle passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivebay.sandbox.bundle_errors import reject

_MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """Bounds on what one bundle may hold; the kernel's configuration sets them.

    ``max_ratio`` is checked for zip members larger than ``ratio_floor_bytes``
    only: small files of repeated text compress well and cannot hurt.
    """

    max_members: int = 10_000
    max_total_bytes: int = 200 * _MiB
    max_member_bytes: int = 100 * _MiB
    max_ratio: int = 100
    ratio_floor_bytes: int = _MiB
    max_depth: int = 64


def human_bytes(count: int) -> str:
    """``count`` as ``200 MiB``, ``64 KiB`` or ``1000 bytes``, whichever is exact."""
    for unit, size in (("GiB", 1 << 30), ("MiB", _MiB), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


class Budget:
    """Counts entries and bytes against ``ReadLimits`` as they are met."""

    def __init__(self, bundle: str, limits: ReadLimits) -> None:
        self.bundle, self.limits = bundle, limits
        self.members = self.total = 0

    def add_member(self, count: int = 1) -> None:
        self.members += count
        if self.members > self.limits.max_members:
            limit = self.limits.max_members
            reject(self.bundle, f"more than {limit} entries; a bundle may hold at most {limit}")

    def check_path(self, raw: str) -> str:
        """``raw`` normalized by ``member_path``, and not nested too deep."""
        path = member_path(raw, self.bundle)
        if path.count("/") > self.limits.max_depth:
            depth = self.limits.max_depth
            reject(self.bundle, raw, f"nested deeper than {depth} folders; flatten the bundle")
        return path

    def add_bytes(self, name: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            reject(
                self.bundle,
                name,
                f"larger than {human_bytes(self.limits.max_member_bytes)}, the limit per "
                "file; shrink it or leave it out",
            )
        self.total += size
        if self.total > self.limits.max_total_bytes:
            limit = human_bytes(self.limits.max_total_bytes)
            reject(self.bundle, f"more than {limit} in total; a bundle may hold at most {limit}")


_DRIVE = re.compile(r"[A-Za-z]:")


MAX_NAME_BYTES = 255  # a file name on Linux file systems
MAX_PATH_BYTES = 1024  # of PATH_MAX's 4096, the rest for the state dir and the store


def member_path(raw: str, bundle: str) -> str:
    """``raw``, a path inside the bundle, normalized (``./a//b`` is ``a/b``).

    Raises ``BundleError`` when it would leave the bundle's root or is not a
    printable name without backslashes.
    """
    if raw.startswith("/") or _DRIVE.match(raw) or ".." in raw.split("/"):
        reject(
            bundle,
            raw,
            "path escapes the bundle; bundles must use relative paths inside their root",
        )
    if "\\" in raw or not raw.isprintable():
        reject(bundle, raw, "name has a backslash, a control character or invalid UTF-8; rename it")
    path = "/".join(part for part in raw.split("/") if part not in ("", "."))
    # Stored under <state>/bundles/<digest>/: leave room for that prefix.
    if any(len(part.encode()) > MAX_NAME_BYTES for part in path.split("/")):
        reject(bundle, raw[:80] + "...", f"a name over {MAX_NAME_BYTES} bytes; shorten it")
    if len(path.encode()) > MAX_PATH_BYTES:
        reject(bundle, raw[:80] + "...", f"a path over {MAX_PATH_BYTES} bytes; shorten it")
    return path
