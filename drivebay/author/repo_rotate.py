"""``drivebay repo rotate DIR ROLE``: replace a top-level role's key.

A new root (version N+1) revokes the old key and trusts the new one; it is
signed by the current root key, and for a root rotation by the new one too,
so a client that trusts root N follows the chain to N+1. The old private key
moves to ``KEYDIR/retired/``. The role's metadata is then signed again with
the new key and published (a new snapshot and timestamp).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from drivebay.author.tuf_repo import TOP_ROLES, RepoError, Repository, new_key, parse_duration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR")
    parser.add_argument("role", choices=TOP_ROLES, metavar="ROLE", help=", ".join(TOP_ROLES))
    parser.add_argument("--keys", type=Path, metavar="KEYDIR", help="default: as repo init said")
    parser.add_argument("--expires", metavar="DURATION", help="the new root's (default 1y)")


def run(args: argparse.Namespace) -> int:
    repo = Repository.open(args.dir.absolute(), args.keys)
    role = args.role
    old = repo.signer(role)
    root_signer = repo.signer("root")
    upcoming = repo.keys / f"{role}.next.key"
    fresh = new_key(upcoming)
    root = repo.root()
    if old.public_key.keyid not in root.signed.roles[role].keyids:
        raise RepoError(
            f"{repo.keys / (role + '.key')}: not {role}'s key in this root; check --keys"
        )
    root.signed.revoke_key(old.public_key.keyid, role)
    root.signed.add_key(fresh.public_key, role)
    signers = [root_signer, fresh] if role == "root" else [root_signer]
    expires = parse_duration(args.expires) if args.expires else None
    repo.write("root", root, signers, expires)
    _retire(repo.keys, role, old.public_key.keyid)
    os.replace(upcoming, repo.keys / f"{role}.key")
    os.replace(upcoming.with_suffix(".pub"), repo.keys / f"{role}.pub")
    if role == "targets":
        targets = repo.load("targets")
        repo.write("targets", targets, [fresh])
    snapshot, timestamp = repo.publish()
    print(
        f"rotated {role}: root {root.signed.version} trusts key {fresh.public_key.keyid[:16]}...; "
        f"published snapshot {snapshot}, timestamp {timestamp}"
    )
    return 0


def _retire(keys: Path, role: str, keyid: str) -> None:
    retired = keys / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    for suffix in (".key", ".pub"):
        path = keys / f"{role}{suffix}"
        if path.exists():
            os.replace(path, retired / f"{role}-{keyid[:16]}{suffix}")
