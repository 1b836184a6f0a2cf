"""``drivebay repo delegate DIR VENDOR --key VENDOR.pub --drivers 'acme-*'``.

The TUF form of a certificate: the top-level targets role delegates the
driver names matching ``--drivers`` to the vendor's role, trusted with the
vendor's key only. The vendor then lists its own bundles (``repo add --role
VENDOR --key VENDOR.key``) and no one else's: a client refuses a target of
that role outside its names, and the delegation is terminating, so no
other role can answer for those names either.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tuf.api.metadata import DelegatedRole, Delegations

from drivebay.author.tuf_repo import TOP_ROLES, RepoError, Repository, load_public

_ROLE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR")
    parser.add_argument("vendor", metavar="VENDOR", help="the role's name")
    parser.add_argument("--key", type=Path, required=True, metavar="VENDOR.pub")
    parser.add_argument(
        "--drivers", required=True, action="append", metavar="PATTERN", help="e.g. 'acme-*'"
    )
    parser.add_argument("--keys", type=Path, metavar="KEYDIR", help="default: as repo init said")


def run(args: argparse.Namespace) -> int:
    vendor = args.vendor
    if not _ROLE.fullmatch(vendor) or vendor in TOP_ROLES:
        raise RepoError(
            f"{vendor!r} cannot name a role; use lowercase letters, digits, - and _ "
            f"(not {', '.join(TOP_ROLES)})"
        )
    patterns = [p.strip() for item in args.drivers for p in item.split(",") if p.strip()]
    if not patterns or any("/" in p for p in patterns):
        raise RepoError("--drivers takes driver name patterns such as 'acme-*' (no /)")
    repo = Repository.open(args.dir.absolute(), args.keys)
    key = load_public(args.key)
    targets = repo.load("targets")
    delegations = targets.signed.delegations or Delegations(keys={}, roles={})
    roles = delegations.roles if delegations.roles is not None else {}
    old = roles.get(vendor)
    if old is not None:
        for keyid in old.keyids:  # a new key replaces the vendor's old one
            if not any(keyid in r.keyids for n, r in roles.items() if n != vendor):
                delegations.keys.pop(keyid, None)
    delegations.keys[key.keyid] = key
    roles[vendor] = DelegatedRole(
        vendor, [key.keyid], 1, True, paths=[f"{pattern}/*" for pattern in patterns]
    )
    delegations.roles = roles
    targets.signed.delegations = delegations
    repo.write("targets", targets, [repo.signer("targets")])
    print(f"delegated {', '.join(patterns)} to {vendor} (key {key.keyid[:16]}...)")
    print("run drivebay repo publish to make it visible")
    return 0
