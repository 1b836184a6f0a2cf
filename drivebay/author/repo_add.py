"""``drivebay repo add DIR BUNDLE... [--role VENDOR --key VENDOR.key]``.

Each bundle (a built ``.zip``) is checked as the daemon would read it, copied
to ``DIR/targets/NAME/SHA256.NAME-VERSION.zip`` and listed as target
``NAME/NAME-VERSION.zip`` with its driver name, version, category and
python in the target's custom metadata. Without ``--role`` the top-level
targets role lists it (its key from KEYDIR); with ``--role`` the vendor's
delegated role does, signed with the vendor's key, for the names delegated
to it only. Clients see it after ``drivebay repo publish``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tuf.api.metadata import DelegatedRole, Metadata, TargetFile, Targets

from drivebay.author.tuf_repo import CUSTOM, RepoError, Repository, load_signer
from drivebay.sandbox.atomic_files import write_whole
from drivebay.sandbox.bundle_reader import read_bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR")
    parser.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE", help="built .zip files")
    parser.add_argument("--keys", type=Path, metavar="KEYDIR", help="default: as repo init said")
    parser.add_argument("--role", metavar="VENDOR", help="the vendor's delegated role")
    parser.add_argument("--key", type=Path, metavar="VENDOR.key", help="the vendor's private key")


def target_path(name: str, version: str) -> str:
    return f"{name}/{name}-{version}.zip"


def run(args: argparse.Namespace) -> int:
    if (args.role is None) != (args.key is None):
        raise RepoError("--role and --key go together: the vendor's role and its private key")
    repo = Repository.open(args.dir.absolute(), args.keys)
    role = args.role or "targets"
    delegated = _delegation(repo, role) if args.role else None
    signer = load_signer(args.key) if args.key else repo.signer("targets")
    if delegated is not None and signer.public_key.keyid not in delegated.keyids:
        raise RepoError(
            f"{args.key}: not the key delegated to {role}; use its key or repo delegate again"
        )
    existing = repo.has(role)
    metadata: Metadata[Targets] = repo.load(role) if existing else Metadata(Targets())
    for bundle in args.bundles:
        path, target = _target(repo, bundle, delegated)
        known = metadata.signed.targets.get(path)
        if known is not None and known.hashes != target.hashes:
            raise RepoError(
                f"{bundle.name}: {path} is already in the repository with other content; "
                "raise the version to ship a change"
            )
        metadata.signed.targets[path] = target
        print(f"added {path}")
    repo.write(role, metadata, [signer], bump=existing)
    print("run drivebay repo publish to make it visible")
    return 0


def _delegation(repo: Repository, role: str) -> DelegatedRole:
    delegations = repo.load("targets").signed.delegations
    found: DelegatedRole | None = (
        delegations.roles.get(role) if delegations and delegations.roles else None
    )
    if found is None:
        raise RepoError(
            f"no role {role!r} in this repository; create it with drivebay repo delegate"
        )
    return found


def _target(
    repo: Repository, bundle: Path, delegated: DelegatedRole | None
) -> tuple[str, TargetFile]:
    if not bundle.name.endswith(".zip") or not bundle.is_file():
        raise RepoError(f"{bundle}: a repository holds built .zip bundles; run drivebay build")
    manifest = read_bundle(bundle).manifest
    path = target_path(manifest.name, manifest.version)
    if delegated is not None and not delegated.is_delegated_path(path):
        raise RepoError(
            f"{bundle.name}: {manifest.name} is not among the names delegated to {delegated.name} "
            f"({', '.join(delegated.paths or [])}); ask the repository's owner"
        )
    custom: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "category": manifest.category,
        "python": manifest.python,
    }
    target = TargetFile.from_file(path, str(bundle), ["sha256"])
    target.unrecognized_fields["custom"] = {CUSTOM: custom}
    digest = target.hashes["sha256"]
    stored = repo.targets_dir / manifest.name / f"{digest}.{manifest.name}-{manifest.version}.zip"
    if not stored.exists():
        write_whole(stored, bundle.read_bytes())
    return path, target
