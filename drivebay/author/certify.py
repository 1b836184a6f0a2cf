"""``drivebay key certify VENDOR.pub --authority AUTH.key --drivers PATTERN -o FILE``.

The authority (the platform's project) vouches for a vendor's key for the
driver names matching the patterns (``fnmatch``: ``acme-*``), optionally
until ``--expires``. A daemon whose ``trust.authorities`` holds the
authority's ``.pub`` then accepts bundles the vendor signed with that
certificate (``drivebay sign --cert FILE``), for those names only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from drivebay.protocol.errors import SigningError
from drivebay.sandbox.bundle_errors import quoted
from drivebay.sandbox.certificates import encode_certificate, parse_time
from drivebay.sandbox.signing import issue_certificate, read_private_key, read_public_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vendor", type=Path, help="the vendor's public key (VENDOR.pub)")
    parser.add_argument(
        "--authority", type=Path, required=True, help="the authority's private key (AUTH.key)"
    )
    parser.add_argument(
        "--drivers",
        action="append",
        required=True,
        metavar="PATTERN",
        help="driver names the key may sign ('acme-*'); repeat for more",
    )
    parser.add_argument(
        "--expires", help="last moment it is valid, UTC: 2027-12-31 or 2027-12-31T12:00:00Z"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="the certificate file")
    parser.add_argument("--json", action="store_true", help="print the certificate as JSON")


def run(args: argparse.Namespace) -> int:
    patterns = [p.strip() for p in args.drivers]
    if not all(patterns):
        raise SigningError("--drivers: an empty pattern; give names or patterns like 'acme-*'")
    try:
        expires = None if args.expires is None else parse_time(args.expires)
    except ValueError as exc:
        raise SigningError(f"--expires: {exc}") from exc
    authority = read_private_key(args.authority)
    cert = issue_certificate(read_public_key(args.vendor), authority, patterns, expires)
    _write(args.output, encode_certificate(cert))
    if expires is not None and expires <= time.time():
        print(f"drivebay: note: {args.output} has already expired", file=sys.stderr)
    if args.json:
        print(encode_certificate(cert).decode(), end="")
        return 0
    until = f" until {cert.expires}" if cert.expires else ""
    names = ", ".join(quoted(p) for p in patterns)
    print(f"{args.output}: key {cert.key_id} may sign {names}{until}")
    print(f"  certified by authority {cert.authority}")
    return 0


def _write(path: Path, data: bytes) -> None:
    try:
        fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
            os.chmod(staging, 0o644)
            os.replace(staging, path)
        except BaseException:
            os.unlink(staging)
            raise
    except OSError as exc:
        raise SigningError(f"{path}: cannot write ({exc.strerror}); check -o") from exc
