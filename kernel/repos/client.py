"""One repository as the daemon reads it, through ``tuf.ngclient.Updater``.

Everything here blocks (network, hashing): the daemon runs it in a worker
thread (``asyncio.to_thread``) with a deadline. Each call starts a fresh
``Updater`` from the operator's trusted root (``Source.root``) and the
metadata cached in ``cache/metadata``: ngclient follows the root chain,
then refuses an expired timestamp (freeze), a version older than one seen
before (rollback), a snapshot or targets version other than the one the
newer role names (mix-and-match), a bad signature, and a target whose
length or hashes differ from its metadata. A failure raises
``RepositoryFailure``, one line naming the repository and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuf.api import exceptions
from tuf.api.metadata import Targets
from tuf.ngclient import Updater

from drivebay.kernel.repos.fetcher import BoundedFetcher, BrokenTransfer
from drivebay.kernel.repos.offers import Deadline, Offer, RepositoryFailure, Source
from drivebay.sandbox.manifest_rules import name_problem
from drivebay.sandbox.pep440 import parse_version

__all__ = ["Deadline", "Offer", "RepositoryFailure", "Source", "download", "list_offers"]

ATTEMPTS = 3  # a download that failed in transit is tried this often
CUSTOM = "drivebay"


def list_offers(source: Source, cache: Path, deadline: Deadline) -> list[Offer]:
    """Every drivebay bundle ``source`` offers (top-level and vendor roles)."""
    updater = _refreshed(source, cache, deadline)
    found: list[Offer] = []
    try:
        top = updater._trusted_set.targets
        found += _offers(source.name, top, lambda _: True)
        delegations = top.delegations
        for role in (delegations.roles or {}).values() if delegations else ():
            # Not exposed by ngclient: load the delegated metadata (verified
            # with the delegator's keys) to list it; only paths the role may
            # answer for are taken, as ngclient's own lookup does.
            targets = updater._load_targets(role.name, Targets.type)
            found += _offers(source.name, targets, role.is_delegated_path)
    except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
        raise _failure(source.name, exc) from exc
    return found


def download(source: Source, cache: Path, path: str, dest: Path, deadline: Deadline) -> Path:
    """Download target ``path`` of ``source`` to ``dest``, verified against its
    length and hashes; tried again when the transfer failed. ``dest`` does
    not exist after a failure."""
    error: Exception | None = None
    for _ in range(ATTEMPTS):
        updater = _refreshed(source, cache, deadline)
        try:
            info = updater.get_targetinfo(path)
            if info is None:
                raise RepositoryFailure(
                    f"repository {source.name}: no longer offers {path}; list it again with avail"
                )
            updater.download_target(info, str(dest), _targets_url(source.url))
            return dest
        except (exceptions.DownloadError, exceptions.LengthOrHashMismatchError) as exc:
            error = exc  # in transit: a retry may get the right bytes
        except exceptions.RepositoryError as exc:
            dest.unlink(missing_ok=True)
            raise _failure(source.name, exc) from exc
        dest.unlink(missing_ok=True)
        if deadline.left() <= 0:
            break
    assert error is not None
    raise _failure(source.name, error, path) from error


def _refreshed(source: Source, cache: Path, deadline: Deadline) -> Updater:
    metadata = cache / "metadata"
    metadata.mkdir(parents=True, exist_ok=True)
    error: Exception | None = None
    for _ in range(ATTEMPTS):
        try:
            updater = Updater(
                str(metadata),
                _metadata_url(source.url),
                fetcher=BoundedFetcher(deadline),
                bootstrap=source.root,
            )
            updater.refresh()
            return updater
        except exceptions.DownloadError as exc:
            error = exc
            if isinstance(exc, exceptions.DownloadHTTPError) or deadline.left() <= 0:
                break
        except (exceptions.RepositoryError, ValueError) as exc:
            raise _failure(source.name, exc) from exc
    assert error is not None
    raise _failure(source.name, error) from error


def _offers(repo: str, targets: Targets, allowed: Callable[[str], bool]) -> list[Offer]:
    found = []
    for path, info in targets.targets.items():
        custom = (info.unrecognized_fields.get("custom") or {}).get(CUSTOM)
        if not isinstance(custom, dict) or not allowed(path):
            continue
        name, version = custom.get("name"), custom.get("version")
        # The custom fields are signed, but must agree with the path (which
        # delegations are checked against) to be believed.
        if not isinstance(name, str) or not isinstance(version, str):
            continue
        if name_problem(name) or parse_version(version) is None or "/" in version:
            continue  # not a driver's name and version: never a file name here
        if path != f"{name}/{name}-{version}.zip":
            continue
        found.append(
            Offer(
                repo, name, version, custom.get("category"), custom.get("python"), path, info.length
            )
        )
    return found


def _metadata_url(url: str) -> str:
    return url.rstrip("/") + "/metadata/"


def _targets_url(url: str) -> str:
    return url.rstrip("/") + "/targets/"


_FIXES: list[tuple[type[Exception], str]] = [
    (
        exceptions.ExpiredMetadataError,
        "its metadata expired (a frozen or unmaintained repository); "
        "ask its publisher to renew it (drivebay repo timestamp)",
    ),
    (
        exceptions.EqualVersionNumberError,
        "it serves the same version with other content; ask its publisher to publish again",
    ),
    (
        exceptions.BadVersionNumberError,
        "it serves older or mismatched metadata (a rollback or mix-and-match); "
        "nothing was trusted from it",
    ),
    (
        exceptions.UnsignedMetadataError,
        "its metadata is not signed by the keys its root trusts; check --root or the repository",
    ),
    (
        exceptions.LengthOrHashMismatchError,
        "what it served does not match its signed metadata (tampered or truncated); "
        "nothing was installed",
    ),
    (
        exceptions.DownloadLengthMismatchError,
        "it served more bytes than its signed metadata allows; nothing was installed",
    ),
    (
        BrokenTransfer,
        f"the transfer broke off (a truncated download), {ATTEMPTS} times; nothing was installed",
    ),
    (
        exceptions.SlowRetrievalError,
        "too slow; the download was stopped at its time limit; retry later",
    ),
    (exceptions.DownloadError, "cannot download from it; check its URL and that it is up"),
]


def _failure(repo: str, exc: Exception, path: str | None = None) -> RepositoryFailure:
    what = next((fix for kind, fix in _FIXES if isinstance(exc, kind)), "refused")
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    subject = f" {path}" if path else ""
    return RepositoryFailure(f"repository {repo}{subject}: {what} ({detail})")
