"""What the drivers directory holds: every bundle file, verified or rejected.

``rescan`` compares each entry's fingerprint (size and mtime of every file
in it) with the last scan and loads only what changed, so a rescan after a
watch event is cheap. A directory must keep the same fingerprint for
``settle_s`` before it is loaded (still being copied otherwise); a zip must
read completely with good CRCs (a half-written one is rejected and retried
when it changes again). From the entries it derives, per driver name, the
versions available and the newest one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import BundleError, DrivebayError, KernelError
from sandbox.bundles import ReadLimits, StoredBundle, load_bundle, version_key

log = logging.getLogger("drivebay.registry")

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class Entry:
    """One file or directory in the drivers dir and its verdict."""

    path: Path
    fingerprint: Fingerprint
    bundle: StoredBundle | None = None
    error: str | None = None
    seen_at: float = 0.0

    @property
    def label(self) -> str:
        if self.bundle is not None:
            return f"{self.bundle.manifest.name}@{self.bundle.manifest.version}"
        return self.path.name


def fingerprint(path: Path) -> Fingerprint:
    """Size and mtime of every file under ``path`` (or of ``path`` itself)."""
    if path.is_file():
        info = path.stat()
        return (("", info.st_size, info.st_mtime_ns),)
    items: list[tuple[str, int, int]] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                info = os.lstat(full)
            except FileNotFoundError:
                continue
            items.append((os.path.relpath(full, path), info.st_size, info.st_mtime_ns))
    return tuple(items)


def is_candidate(path: Path) -> bool:
    """Bundles are directories and .zip files; hidden and temporary names are not."""
    name = path.name
    if name.startswith(".") or name.endswith(("~", ".tmp", ".part", ".swp")):
        return False
    return path.is_dir() or name.endswith(".zip")


class Registry:
    """The verified contents of the drivers directory."""

    def __init__(
        self,
        drivers_dir: Path,
        state_dir: Path,
        settle_s: float = 1.0,
        limits: ReadLimits | None = None,
    ) -> None:
        self.limits = limits or ReadLimits()
        self.drivers_dir = drivers_dir
        self.state_dir = state_dir
        self.settle_s = settle_s
        self.entries: dict[Path, Entry] = {}
        self.unsettled: set[Path] = set()
        # Verdicts worked out anew on every pass, which leave the entry's
        # bundle alone: a twin of a version another file provides, and a
        # same-version change the kernel holds back (``hold``). Once the
        # cause is gone, the bundle is usable again.
        self._twins: dict[Path, str] = {}
        self._held: dict[Path, str] = {}
        self._logged: set[str] = set()

    async def rescan(self) -> bool:
        """Bring entries up to date; True when anything changed."""
        self._held.clear()
        try:
            present = sorted(p for p in self.drivers_dir.iterdir() if is_candidate(p))
        except FileNotFoundError:
            present = []
        except OSError as exc:
            raise KernelError(
                f"cannot read drivers dir {self.drivers_dir}: {exc.strerror}"
            ) from exc
        changed = False
        for gone in set(self.entries) - set(present):
            log.info("bundle removed: %s", gone.name)
            del self.entries[gone]
            changed = True
        self.unsettled.clear()
        for path in present:
            print_ = self._fingerprint(path)
            known = self.entries.get(path)
            if known is not None and known.fingerprint == print_:
                continue
            if path.is_dir() and not await self._settled(path, print_):
                self.unsettled.add(path)
                continue
            self.entries[path] = await self._load(path, print_)
            changed = True
        return changed

    def _fingerprint(self, path: Path) -> Fingerprint:
        try:
            return fingerprint(path)
        except OSError:
            return ()

    async def _settled(self, path: Path, first: Fingerprint) -> bool:
        """Unchanged for ``settle_s``? (A copy in progress keeps changing.)"""
        newest = max((mtime for _, _, mtime in first), default=0) / 1e9
        quiet_for = time.time() - newest
        if quiet_for < self.settle_s:  # a future mtime (a fast clock elsewhere) waits settle_s
            await asyncio.sleep(min(self.settle_s, self.settle_s - quiet_for))
        return self._fingerprint(path) == first

    async def _load(self, path: Path, print_: Fingerprint) -> Entry:
        entry = Entry(path, print_, seen_at=time.time())
        try:
            entry.bundle = await asyncio.to_thread(load_bundle, path, self.state_dir, self.limits)
        except BundleError as exc:
            entry.error = str(exc)
            log.warning("rejected bundle: %s", exc)
        except DrivebayError as exc:  # storing it failed (disk full, ...): this bundle only
            entry.error = f"{path.name}: {exc}"
            log.error("could not take bundle %s: %s", path.name, exc)
        else:
            log.info("verified bundle %s: %s", path.name, entry.label)
        return entry

    # -- derived views -----------------------------------------------------------

    def versions(self, keep: Collection[str] = ()) -> dict[str, dict[str, StoredBundle]]:
        """{driver name: {version: bundle}}; a version given twice with different
        content keeps the file whose digest is in ``keep`` (the running one),
        else the first by name, and shows the others INVALID for as long as
        both are there."""
        found: dict[str, dict[str, StoredBundle]] = {}
        twins: dict[Path, str] = {}
        order = sorted(self.entries, key=lambda p: (self._digest(p) not in keep, p))
        for path in order:
            bundle = self.entries[path].bundle
            if bundle is None:
                continue
            known = found.setdefault(bundle.manifest.name, {})
            twin = known.get(bundle.manifest.version)
            if twin is not None and twin.digest != bundle.digest:
                twins[path] = (
                    f"{path.name}: driver.yaml: version: {bundle.manifest.name} "
                    f"{bundle.manifest.version} is already provided by {twin.source.name} with "
                    "different content; raise the version to ship a change"
                )
                continue
            known.setdefault(bundle.manifest.version, bundle)
        self._twins = twins
        return found

    def _digest(self, path: Path) -> str:
        bundle = self.entries[path].bundle
        return bundle.digest if bundle is not None else ""

    def hold(self, bundle: StoredBundle, reason: str) -> None:
        """Show ``bundle``'s file INVALID for this pass (the kernel keeps
        running the version it replaces); logged once."""
        for path, entry in self.entries.items():
            if entry.bundle is bundle:
                self._held[path] = reason
                if reason not in self._logged:
                    self._logged.add(reason)
                    log.warning("rejected bundle: %s", reason)

    def verdict(self, entry: Entry) -> str | None:
        """Why ``entry`` is not usable now, or None."""
        return entry.error or self._held.get(entry.path) or self._twins.get(entry.path)

    def newest(self) -> dict[str, StoredBundle]:
        """The newest version of each driver."""
        return {
            name: versions[max(versions, key=version_key)]
            for name, versions in self.versions().items()
        }

    def invalid(self) -> list[Entry]:
        return [entry for entry in self.entries.values() if self.verdict(entry) is not None]
