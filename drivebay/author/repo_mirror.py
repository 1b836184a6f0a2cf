"""``drivebay repo mirror URL DIR --root root.json [--resign SITE_KEYS]``.

The upstream repository is read as a daemon reads it (``tuf.ngclient``,
starting from ``--root``): every metadata file and every bundle is verified
before it is written. Then:

- without ``--resign``, ``DIR`` becomes a copy of the upstream repository: its
  root chain, the timestamp, and the snapshot and targets metadata they name,
  byte for byte, and the bundles. Daemons use it with the upstream's root;
  it is valid for as long as the upstream's timestamp is (a mirror cannot
  sign one).
- with ``--resign SITE_KEYS``, ``DIR`` is a repository of the site's own (made
  with keys in ``SITE_KEYS`` if it is not one yet) whose targets are the
  upstream's verified bundles, unchanged: the site renews its own timestamps
  (``drivebay repo timestamp DIR``) for as long as it wants, while each
  bundle keeps its vendor's signature, which the daemon's trust policy checks.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tuf.api.metadata import Metadata, Snapshot, TargetFile, Timestamp

from drivebay.author.tuf_repo import CUSTOM, RepoError, Repository
from drivebay.kernel.repos.client import Deadline, Offer, Source, download, list_offers
from drivebay.protocol.errors import DrivebayError
from drivebay.sandbox.atomic_files import write_whole

MIRROR_S = 600.0  # the whole copy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="the upstream repository (URL or directory)")
    parser.add_argument("dir", type=Path, metavar="DIR", help="where the mirror is written")
    parser.add_argument("--root", type=Path, required=True, help="the upstream's trusted root.json")
    parser.add_argument(
        "--resign", type=Path, metavar="SITE_KEYS", help="publish under the site's own root"
    )


def run(args: argparse.Namespace) -> int:
    try:
        root = args.root.read_bytes()
    except OSError as exc:
        raise RepoError(f"--root {args.root}: cannot read it: {exc.strerror}") from exc
    url = args.url if "://" in args.url else str(Path(args.url).absolute())
    source = Source("upstream", url, root)
    target = args.dir.absolute()
    with tempfile.TemporaryDirectory(prefix="drivebay-mirror-") as work:
        cache = Path(work)
        deadline = Deadline(MIRROR_S)
        try:
            offers = list_offers(source, cache, deadline)
            bundles = {offer: cache / f"{i}.zip" for i, offer in enumerate(offers)}
            for offer, path in bundles.items():
                download(source, cache, offer.path, path, deadline)
        except DrivebayError as exc:
            raise RepoError(f"{exc}; nothing was mirrored") from exc
        if args.resign is not None:
            _resign(target, args.resign.absolute(), bundles)
        else:
            _copy(target, cache / "metadata", bundles)
    print(f"mirrored {len(offers)} bundles from {args.url} to {target}")
    return 0


def _stored(root_dir: Path, offer: Offer, bundle: Path) -> tuple[Path, TargetFile]:
    info = TargetFile.from_file(offer.path, str(bundle), ["sha256"])
    name = offer.path.rsplit("/", 1)[-1]
    stored = root_dir / "targets" / offer.name / f"{info.hashes['sha256']}.{name}"
    if not stored.exists():
        write_whole(stored, bundle.read_bytes())
    return stored, info


def _copy(target: Path, verified: Path, bundles: dict[Offer, Path]) -> None:
    """The upstream's verified metadata as the upstream served it, and its bundles."""
    if (target / ".drivebay-repo.json").exists():
        raise RepoError(f"{target}: is a repository with its own keys; mirror elsewhere")
    metadata = target / "metadata"
    for each in sorted((verified / "root_history").glob("*.root.json")):
        write_whole(metadata / each.name, each.read_bytes())
    newest = max(
        (verified / "root_history").glob("*.root.json"), key=lambda p: int(p.name.split(".")[0])
    )
    write_whole(metadata / "root.json", newest.read_bytes())
    for offer, bundle in bundles.items():
        _stored(target, offer, bundle)
    snapshot = Metadata[Snapshot].from_file(str(verified / "snapshot.json")).signed
    for name, meta in snapshot.meta.items():  # targets.json, VENDOR.json
        data = (verified / name).read_bytes() if (verified / name).exists() else None
        if data is None:
            continue  # a vendor role no bundle was looked up in: not mirrored
        write_whole(metadata / f"{meta.version}.{name}", data)
    stamp = Metadata[Timestamp].from_file(str(verified / "timestamp.json")).signed
    version = stamp.snapshot_meta.version
    write_whole(metadata / f"{version}.snapshot.json", (verified / "snapshot.json").read_bytes())
    # The timestamp last: a client sees the new state only once all it names is there.
    write_whole(metadata / "timestamp.json", (verified / "timestamp.json").read_bytes())


def _resign(target: Path, keys: Path, bundles: dict[Offer, Path]) -> None:
    """The verified bundles as the targets of the site's own repository."""
    if not (target / "metadata" / "1.root.json").exists():
        from drivebay.author import repo_init

        repo_init.run(argparse.Namespace(dir=target, keys=keys, expires=None))
    repo = Repository.open(target, keys)
    targets = repo.load("targets")
    targets.signed.targets = {}
    for offer, bundle in bundles.items():
        _, info = _stored(target, offer, bundle)
        custom = {
            "name": offer.name,
            "version": offer.version,
            "category": offer.category,
            "python": offer.python,
        }
        info.unrecognized_fields["custom"] = {CUSTOM: custom}
        targets.signed.targets[offer.path] = info
    repo.write("targets", targets, [repo.signer("targets")])
    repo.publish()
