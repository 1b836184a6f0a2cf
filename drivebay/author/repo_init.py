"""``drivebay repo init DIR --keys KEYDIR``: a new, empty TUF repository.

Makes one Ed25519 key per top-level role in ``KEYDIR`` (mode 0700; refused
inside ``DIR``, which is served), and version 1 of root, targets, snapshot
and timestamp in ``DIR/metadata``. Hand ``DIR/metadata/root.json`` to the
operators: it is where their daemons' trust in the repository starts.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp

from drivebay.author.tuf_repo import (
    POINTER,
    TOP_ROLES,
    RepoError,
    Repository,
    new_key,
    parse_expires,
)
from drivebay.sandbox.atomic_files import write_whole


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="the tree a web server serves")
    parser.add_argument(
        "--keys", type=Path, required=True, metavar="KEYDIR", help="where the private keys go"
    )
    parser.add_argument(
        "--expires",
        action="append",
        metavar="ROLE=DURATION",
        help="how long ROLE's metadata is valid (30s, 10m, 12h, 7d, 1y)",
    )


def run(args: argparse.Namespace) -> int:
    root_dir, keys = args.dir.absolute(), args.keys.absolute()
    expires = parse_expires(args.expires)
    if keys == root_dir or root_dir in keys.parents:
        raise RepoError(
            f"{keys}: keys must not be inside the served tree {root_dir}; pick another --keys"
        )
    if (root_dir / "metadata" / "1.root.json").exists():
        raise RepoError(f"{root_dir}: already a repository; use drivebay repo add or publish")
    if keys.exists() and any((keys / f"{role}.key").exists() for role in TOP_ROLES):
        raise RepoError(f"{keys}: already holds repository keys; pick an empty --keys directory")
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys, 0o700)
    signers = {role: new_key(keys / f"{role}.key") for role in TOP_ROLES}
    root = Root(consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    repo = Repository(root_dir, keys)
    (root_dir / "targets").mkdir(parents=True, exist_ok=True)
    first: dict[str, Metadata] = {  # type: ignore[type-arg]
        "root": Metadata(root),
        "targets": Metadata(Targets()),
        "snapshot": Metadata(Snapshot(meta={"targets.json": MetaFile(version=1)})),
        "timestamp": Metadata(Timestamp(snapshot_meta=MetaFile(version=1))),
    }
    for role in ("root", "targets", "snapshot", "timestamp"):
        repo.write(role, first[role], [signers[role]], expires.get(role), bump=False)
    write_whole(root_dir / POINTER, json.dumps({"keys": str(keys)}).encode())
    print(f"created repository {root_dir}; keys in {keys}")
    print(f"operators trust it with: {root_dir / 'metadata' / 'root.json'}")
    return 0
