"""What the drivers directory holds: every bundle file, verified or rejected.

``rescan`` never touches the file system on the event loop: listing the
drivers dir, walking entries (``kernel.drivers.directory``) and reading bundles
run in a worker thread, and only their results are applied on the loop, so
the control socket keeps answering whatever the drivers dir holds. An entry
is walked again only when its own ``lstat`` changed, the watcher saw a
change inside it (``touched``), or it is waiting (to settle, or for a retry);
so an INVALID tree of a million files costs nothing until it changes. A
directory must look quiet (no mtime within ``settle_s``, or the same
fingerprint for ``settle_s``) before it is loaded (still being copied
otherwise); a zip must read completely with good CRCs. A bundle that could
not be taken for a reason not its own (full disk, I/O error) is tried again
with backoff (``kernel.drivers.load_retry``). From the entries it derives, per driver
name, the versions available and the newest one.

Each bundle's signature is checked under the trust policy as it is read
(``sandbox.trust``). A new policy (a reload) judges every entry again, read
afresh from the drivers dir; so does the expiry of a certificate a bundle
was accepted through.

Every verdict reached on a bundle's read (and each same-version change the
kernel holds back, once) is handed to ``on_verdict`` (the kernel's event
ring): ``(path, bundle, None)`` when accepted, ``(path, bundle or None,
why)`` when rejected.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from drivebay.kernel.drivers.directory import Top, Walk, look, settled
from drivebay.kernel.drivers.load_retry import LoadRetries
from drivebay.protocol.errors import BundleError, DrivebayError, KernelError
from drivebay.sandbox.bundle_errors import shown
from drivebay.sandbox.bundles import (
    ReadLimits,
    SignatureCheck,
    StoredBundle,
    TrustPolicy,
    load_bundle,
    version_key,
)

log = logging.getLogger("drivebay.registry")

Verdict = Callable[[Path, StoredBundle | None, str | None], None]

WATCH_MAX_DIRS = 1000


@dataclass
class Entry:
    """One file or directory in the drivers dir and its verdict."""

    path: Path
    top: Top
    walk: Walk
    bundle: StoredBundle | None = None
    error: str | None = None
    seen_at: float = 0.0
    limits: ReadLimits | None = None  # the limits it was judged under
    trust: TrustPolicy | None = None  # the trust policy it was judged under

    @property
    def label(self) -> str:
        if self.bundle is not None:
            return f"{self.bundle.manifest.name}@{self.bundle.manifest.version}"
        return self.path.name


class Registry:
    """The verified contents of the drivers directory."""

    def __init__(
        self,
        drivers_dir: Path,
        state_dir: Path,
        settle_s: float = 1.0,
        limits: ReadLimits | None = None,
        retries: LoadRetries[Path] | None = None,
        trust: TrustPolicy | None = None,
    ) -> None:
        self._limits = limits or ReadLimits()
        self._trust = trust or TrustPolicy()
        self.drivers_dir = drivers_dir
        self.state_dir = state_dir
        self.settle_s = settle_s
        self.entries: dict[Path, Entry] = {}
        # Directories still changing: their last walk and since when (monotonic)
        # it has been the same.
        self.unsettled: dict[Path, tuple[Walk, float]] = {}
        self.retries: LoadRetries[Path] = retries or LoadRetries()
        self._touched: set[Path] | None = None  # None: look at every entry
        # Verdicts worked out anew on every pass, which leave the entry's
        # bundle alone: a twin of a version another file provides, and a
        # same-version change the kernel holds back (``hold``). Once the
        # cause is gone, the bundle is usable again.
        self._twins: dict[Path, str] = {}
        self._held: dict[Path, str] = {}
        self._logged: set[str] = set()
        self.on_verdict: Verdict = lambda path, bundle, error: None

    @property
    def limits(self) -> ReadLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: ReadLimits) -> None:
        """New limits (a reload): every entry refused under the old ones is
        judged again at the next rescan."""
        if limits != self._limits:
            self._limits = limits
            self._touched = None

    @property
    def trust(self) -> TrustPolicy:
        return self._trust

    @trust.setter
    def trust(self, trust: TrustPolicy) -> None:
        """A new trust policy (a reload): every entry is read and judged again
        at the next rescan; one refused now is INVALID (its running driver
        is stopped as if its file had been removed), one accepted now runs."""
        if trust != self._trust:
            self._trust = trust
            self._touched = None

    def signature_of(self, bundle: StoredBundle) -> SignatureCheck | None:
        """How ``bundle``'s signature stands under the current policy: as its
        file was last judged, when that file still holds the same content."""
        entry = self.entries.get(bundle.source)
        if entry is not None and entry.bundle is not None and entry.bundle.digest == bundle.digest:
            return entry.bundle.signature
        return bundle.signature if self._trust.mode != "off" else None

    # -- what to look at -----------------------------------------------------------

    def touched(self, paths: Iterable[str]) -> None:
        """The watcher saw ``paths`` change: walk their entries at the next rescan."""
        if self._touched is None:
            return
        root = self.drivers_dir.absolute()
        for changed in paths:
            try:
                parts = Path(changed).relative_to(root).parts
            except ValueError:
                continue
            if not parts:  # the drivers dir itself
                self._touched = None
                return
            self._touched.add(self.drivers_dir / parts[0])

    def touch_all(self) -> None:
        """Walk every entry at the next rescan (the watch was (re)started)."""
        self._touched = None

    def watch_dirs(self) -> frozenset[Path]:
        """The directories the walks met: what the watcher must watch. At most
        WATCH_MAX_DIRS (each is an inotify watch, which the whole system
        shares), those of directories being copied and usable bundles first; a
        change in a folder beyond them is seen once its entry changes at the
        top or is walked again."""
        usable = sorted(self.entries.items(), key=lambda item: (item[1].bundle is None, item[0]))
        walks = [pending for pending, _ in self.unsettled.values()]
        walks += [entry.walk for _, entry in usable]
        folders = (folder for w in walks for folder in w.dirs)
        return frozenset(itertools.islice(dict.fromkeys(folders), WATCH_MAX_DIRS))

    def look_again_in(self) -> float | None:
        """Seconds until a rescan is needed without any change (an entry to
        settle or to retry, a certificate to expire), or None."""
        # A moment after the expiry: the loop's clock is not the wall clock.
        expiring = [max(0.0, at - time.time()) + 0.05 for at in self._expiries().values()]
        waits = [self.retries.next_in(), self.settle_s if self.unsettled else None, *expiring]
        return min((w for w in waits if w is not None), default=None)

    def _expiries(self) -> dict[Path, float]:
        """When the certificate each bundle was accepted through expires."""
        return {
            path: entry.bundle.signature.valid_until
            for path, entry in self.entries.items()
            if entry.bundle is not None
            and entry.bundle.signature is not None
            and entry.bundle.signature.valid_until is not None
        }

    # -- rescanning ----------------------------------------------------------------

    async def rescan(self) -> bool:
        """Bring entries up to date; True when anything changed."""
        self._held.clear()
        touched, self._touched = self._touched, set()
        try:
            return await self._rescan(touched)
        except BaseException:
            self._touched = None  # what was touched may not have been seen
            raise

    async def _rescan(self, touched: set[Path] | None) -> bool:
        now = time.time()
        due = {*self.retries.due(), *(p for p, at in self._expiries().items() if at <= now)}
        again = {*due, *self.unsettled} if touched is None else {*touched, *due, *self.unsettled}
        known = {path: entry.top for path, entry in self.entries.items()}
        wide = touched is None
        try:
            tops, walks = await asyncio.to_thread(
                look, self.drivers_dir, self.limits, known, again, wide
            )
        except OSError as exc:
            raise KernelError(
                f"cannot read drivers dir {self.drivers_dir}: {exc.strerror}"
            ) from exc
        changed = False
        for gone in set(self.entries) - set(tops):
            log.info("bundle removed: %s", shown(gone.name))
            del self.entries[gone]
            self.retries.forget(gone)
            changed = True
        for gone in set(self.unsettled) - set(tops):
            del self.unsettled[gone]
        for path, seen in walks.items():
            before = self.entries.get(path)
            if self._decide(path, tops[path], seen, path in due):
                self.entries[path] = await self._load(path, tops[path], seen)
            changed = changed or self.entries.get(path) is not before
        return changed

    def _decide(self, path: Path, top: Top, seen: Walk, due: bool) -> bool:
        """Record what a fresh walk of ``path`` means; True: load the bundle."""
        entry = self.entries.get(path)
        judged = entry is not None and entry.walk.fingerprint == seen.fingerprint
        if (
            entry is not None
            and judged
            and not due
            and entry.trust == self.trust
            and (entry.error is None or entry.limits == self.limits)
        ):
            entry.top, entry.walk = top, seen
            self.unsettled.pop(path, None)
            return False
        if not judged:
            self.retries.forget(path)  # a changed bundle is tried at once
        if seen.refused is not None:
            self.unsettled.pop(path, None)
            self.entries[path] = Entry(
                path,
                top,
                seen,
                error=seen.refused,
                seen_at=time.time(),
                limits=self.limits,
                trust=self.trust,
            )
            if entry is None or entry.error != seen.refused:  # once, not at every change of a copy
                log.warning("rejected bundle: %s", seen.refused)
                self.on_verdict(path, None, seen.refused)
            return False
        if top.is_dir and top.link is None and not judged:  # judged: it had settled
            pending = self.unsettled.get(path)
            since = pending[1] if pending and pending[0].fingerprint == seen.fingerprint else None
            now = time.monotonic()
            if not settled(seen, now - (since or now), time.time(), self.settle_s):
                self.unsettled[path] = (seen, since or now)
                return False
        self.unsettled.pop(path, None)
        return True

    async def _load(self, path: Path, top: Top, seen: Walk) -> Entry:
        entry = Entry(path, top, seen, seen_at=time.time(), limits=self.limits, trust=self.trust)
        try:
            entry.bundle = await asyncio.to_thread(
                load_bundle, path, self.state_dir, self.limits, self.trust
            )
        except BundleError as exc:
            self.retries.forget(path)
            entry.error = str(exc)
            log.warning("rejected bundle: %s", exc)
            self.on_verdict(path, None, entry.error)
        except DrivebayError as exc:  # the host's fault (disk full, ...): tried again
            delay = self.retries.failed(path)
            at = time.strftime("%H:%M:%S", time.localtime(time.time() + delay))
            name = shown(path.name)
            reason = str(exc).removeprefix(f"{name}: ")  # the reader names the bundle
            entry.error = f"{name}: {reason}; trying again at {at}"
            log.error("could not take bundle %s (trying again in %g s): %s", name, delay, exc)
            self.on_verdict(path, None, entry.error)
        else:
            self.retries.forget(path)
            log.info("verified bundle %s: %s", shown(path.name), shown(entry.label))
            self.on_verdict(path, entry.bundle, None)
            problem = entry.bundle.signature and entry.bundle.signature.problem
            if problem:
                log.warning(
                    "bundle %s runs under trust.signatures: warn, but %s",
                    shown(path.name),
                    ": ".join(shown(part) for part in (problem.file, problem.line) if part),
                )
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
                    self.on_verdict(path, bundle, reason)

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
