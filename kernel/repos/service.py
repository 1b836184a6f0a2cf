"""The daemon's repositories: what they offer, installing from them, the update check.

Blocking work (the TUF client, hashing, copying) runs in worker threads, each
bounded by a deadline; one repository is read by one thread at a time (its
metadata cache is shared). Nothing here touches the network when no
repository is configured.

``install`` places a verified bundle in the drivers dir whole: copied to a
hidden ``.NAME-VERSION.zip.<pid>.part`` (a name the registry never takes),
fsynced, then linked to ``NAME-VERSION.zip`` (which fails rather than
replace a file already there) and the temporary name removed. The registry
is told at once (no settle wait: a zip is read whole or refused), and the
normal path takes over: the bundle is read, checked (the trust policy
included), stored and, when newest, started and handed the resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from drivebay.kernel.config import Config
from drivebay.kernel.repos.offers import Deadline, Offer, RepositoryFailure, Source
from drivebay.kernel.repos.sources import cache_dir, sources
from drivebay.protocol.errors import BundleError, DrivebayError, RequestError
from drivebay.sandbox.atomic_files import sync_dir
from drivebay.sandbox.bundles import version_key

if TYPE_CHECKING:
    from drivebay.kernel.kernel import Kernel

log = logging.getLogger("drivebay.repos")

LIST_S = 30.0  # reading one repository's metadata
DOWNLOAD_S = 300.0  # one bundle, retries included

T = TypeVar("T")


class Repositories:
    """The repositories of one daemon and what the last update check found."""

    def __init__(self) -> None:
        self.updates: dict[str, Offer] = {}  # driver -> the newest version offered above it
        self.changed = asyncio.Event()  # the config was reloaded: the check's interval may differ
        self._locks: dict[str, asyncio.Lock] = {}

    async def _in_thread(self, source: Source, call: Callable[[Deadline], T], seconds: float) -> T:
        """``call(deadline)`` in a worker thread, one per repository at a time; a
        cancelled wait stops the thread's fetches too (within READ_GAP_S)."""
        deadline = Deadline(seconds)
        lock = self._locks.setdefault(source.name, asyncio.Lock())
        try:
            async with lock, asyncio.timeout(seconds + 10):  # the deadline ends it first
                return await asyncio.to_thread(call, deadline)
        finally:
            deadline.stopped.set()

    # -- reading ---------------------------------------------------------------------

    async def offers(
        self, config: Config, only: str | None = None
    ) -> tuple[list[Offer], dict[str, str]]:
        """What every repository (or repository ``only``) offers, and one line
        per repository that failed."""
        found, problems = await asyncio.to_thread(sources, config)
        failed = {line.split(":", 1)[0].removeprefix("repository "): line for line in problems}
        if only is not None:
            found = [source for source in found if source.name == only]
            failed = {name: line for name, line in failed.items() if name == only}
            if not found and not failed:
                raise RequestError(f"no repository {only}; see drivebayctl repo list")

        from drivebay.kernel.repos.client import list_offers

        async def one(source: Source) -> list[Offer]:
            cache = cache_dir(config.state_path, source.name)
            try:
                return await self._in_thread(
                    source, lambda deadline: list_offers(source, cache, deadline), LIST_S
                )
            except (RepositoryFailure, TimeoutError, OSError) as exc:
                failed[source.name] = str(exc) or f"repository {source.name}: timed out"
                return []

        lists = await asyncio.gather(*(one(source) for source in found))
        return [offer for offers in lists for offer in offers], failed

    # -- installing ------------------------------------------------------------------

    async def install(
        self, k: Kernel, name: str, version: str | None, repo: str | None
    ) -> tuple[Offer, Path, str]:
        """Download, verify and place ``name`` (``version``: the highest offered);
        returns the offer, the placed file and the driver's state after it."""
        offers, failed = await self.offers(k.config, repo)
        chosen = choose(offers, name, version, repo)
        if chosen is None:
            if repo is not None and repo in failed:
                raise RepositoryFailure(failed[repo])
            wanted = f"{name}=={version}" if version else name
            where = f"repository {repo} offers" if repo else "no repository offers"
            problems = "; ".join(failed.values())
            raise RequestError(
                f"{where} {wanted}; see drivebayctl avail" + (f" ({problems})" if problems else "")
            )
        present = k.registry.versions().get(chosen.name, {}).get(chosen.version)
        if present is not None:  # a version is one content: nothing to download
            slot = k.slots.get(f"{chosen.name}@{chosen.version}")
            return chosen, present.source, str(slot.state) if slot else "available"
        found, _ = await asyncio.to_thread(sources, k.config)
        source = next(s for s in found if s.name == chosen.repo)
        placed = await self._fetch_and_place(k, source, chosen)
        log.info("installed %s %s from repository %s", chosen.name, chosen.version, chosen.repo)
        state = await hand_to_registry(k, placed, chosen)
        if self._caught_up(chosen):
            del self.updates[chosen.name]
        return chosen, placed, state

    def _caught_up(self, offer: Offer) -> bool:
        update = self.updates.get(offer.name)
        return update is not None and version_key(update.version) <= version_key(offer.version)

    async def _fetch_and_place(self, k: Kernel, source: Source, offer: Offer) -> Path:
        state = k.config.state_path
        cache = cache_dir(state, source.name)
        downloads = cache / "downloads"
        drivers = k.config.drivers_path
        limits = k.config.bundles.read_limits()
        trust = k.registry.trust

        from drivebay.kernel.repos.client import download

        def fetch(deadline: Deadline) -> Path:
            downloads.mkdir(parents=True, exist_ok=True)
            got = downloads / f"{offer.name}-{offer.version}.zip"
            try:
                download(source, cache, offer.path, got, deadline)
                from drivebay.sandbox.bundle_reader import read_bundle
                from drivebay.sandbox.trust import enforce

                bundle = read_bundle(got, limits)
                try:
                    # The daemon's signature policy, before anything is placed:
                    # a bundle it would refuse never reaches the drivers dir.
                    enforce(bundle, trust)
                except BundleError as exc:
                    raise RepositoryFailure(f"{exc}; nothing was installed") from exc
                manifest = bundle.manifest
                if (manifest.name, manifest.version) != (offer.name, offer.version):
                    raise RepositoryFailure(
                        f"repository {source.name} {offer.path}: the bundle is "
                        f"{manifest.name} {manifest.version}, not what its metadata says; "
                        "nothing was installed"
                    )
                return place(got, drivers)
            finally:
                got.unlink(missing_ok=True)

        try:
            return await self._in_thread(source, fetch, DOWNLOAD_S)
        except TimeoutError:
            raise RepositoryFailure(
                f"repository {source.name} {offer.path}: the download took too long; retry later"
            ) from None

    # -- the update check --------------------------------------------------------------

    async def check(self, k: Kernel) -> dict[str, Offer]:
        """Newer versions offered than the newest in the drivers dir; logged once each."""
        offers, failed = await self.offers(k.config)
        for line in failed.values():
            log.warning("update check: %s", line)
        installed = k.registry.versions()
        updates: dict[str, Offer] = {}
        for offer in offers:
            versions = installed.get(offer.name)
            if not versions:
                continue
            newest = max(versions, key=version_key)
            best = updates.get(offer.name)
            if version_key(offer.version) > version_key(newest) and (
                best is None or version_key(offer.version) > version_key(best.version)
            ):
                updates[offer.name] = offer
        for driver, offer in updates.items():
            known = self.updates.get(driver)
            if known is None or known.version != offer.version:
                log.info(
                    "update available: %s %s (repository %s)", driver, offer.version, offer.repo
                )
                newest = max(installed[driver], key=version_key)
                found = {"repo": offer.repo, "installed": newest}
                k.events.emit("update.available", driver=driver, version=offer.version, data=found)
        self.updates = updates
        return updates

    async def run_checks(self, k: Kernel, stop: asyncio.Event) -> None:
        """Check every ``update_check_interval_s`` (0: never) until ``stop``;
        install what is found where ``auto_update`` says so."""
        while not stop.is_set():
            self.changed.clear()
            config = k.config
            interval = config.update_check_interval_s
            wait: float | None = None  # off: wait for a reload
            if interval > 0 and (config.repositories or await asyncio.to_thread(_has_kept, config)):
                try:
                    await self._check_and_update(k)
                except Exception:  # a bug or a host problem: logged; the daemon goes on
                    log.exception("update check failed; checking again in %g s", interval)
                wait = interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await _first(stop.wait(), self.changed.wait())

    async def _check_and_update(self, k: Kernel) -> None:
        updates = await self.check(k)
        for driver, offer in list(updates.items()):  # an install updates self.updates
            settings = k.config.drivers.get(driver)
            auto = settings.auto_update if settings and settings.auto_update is not None else None
            if not (k.config.auto_update if auto is None else auto):
                continue
            try:
                await self.install(k, driver, offer.version, offer.repo)
            except DrivebayError as exc:
                log.error("auto update of %s to %s failed: %s", driver, offer.version, exc)


def _has_kept(config: Config) -> bool:
    return (config.state_path / "repositories.json").exists()


async def _first(*waits: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def choose(offers: list[Offer], name: str, version: str | None, repo: str | None) -> Offer | None:
    """The offer to install: ``version`` (or the highest), from ``repo`` (or any;
    on a tie the first repository listed)."""
    matching = [
        offer
        for offer in offers
        if offer.name == name
        and (repo is None or offer.repo == repo)
        and (version is None or version_key(offer.version) == version_key(version))
    ]
    if not matching:
        return None
    best = max(version_key(offer.version) for offer in matching)
    return next(offer for offer in matching if version_key(offer.version) == best)


def place(verified: Path, drivers: Path) -> Path:
    """Put ``verified`` in ``drivers`` under its own name, whole or not at all;
    RequestError when another file of that name is there."""
    final = drivers / verified.name
    if final.exists():
        if final.is_file() and final.read_bytes() == verified.read_bytes():
            return final  # installed before: the registry has it
        raise RequestError(
            f"{final}: another file of that name is in the drivers dir; remove it to install"
        )
    drivers.mkdir(parents=True, exist_ok=True)
    temp = drivers / f".{verified.name}.{os.getpid()}.part"
    try:
        with open(verified, "rb") as source, open(temp, "wb") as target:
            shutil.copyfileobj(source, target)
            target.flush()
            os.fsync(target.fileno())
        os.link(temp, final)  # never replaces a file that appeared meanwhile
    except FileExistsError:
        raise RequestError(
            f"{final}: appeared in the drivers dir meanwhile; not replaced"
        ) from None
    finally:
        temp.unlink(missing_ok=True)
    sync_dir(drivers)
    return final


async def hand_to_registry(k: Kernel, placed: Path, offer: Offer) -> str:
    """Tell the registry of ``placed`` now and wait for the reconcile pass that
    reads it; when it is the newest version, wait until it has started.
    Returns the driver version's state (``available`` for an older version)."""
    from drivebay.kernel.drivers.lifecycle import State

    k.registry.touched([str(placed)])  # absolute: the drivers dir's path is
    budget = k.config.timeouts.settle_budget()
    async with asyncio.timeout(budget):
        await k.next_pass()
    entry = k.registry.entries.get(placed)
    verdict = "not read" if entry is None else k.registry.verdict(entry)
    if verdict is not None:
        raise RequestError(f"{placed.name} was placed in the drivers dir but refused: {verdict}")
    slot = k.slots.get(f"{offer.name}@{offer.version}")
    if slot is None:
        return "available"  # not the newest: it runs once pinned
    ended = frozenset({State.RUNNING, State.FAILED, State.FATAL, State.BLOCKED})
    return str(await slot.wait_settled(budget, ended))
