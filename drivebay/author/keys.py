"""``drivebay key new NAME [--dir D]``: make an Ed25519 key pair for signing.

Writes ``NAME.key`` (the private key, PKCS#8 PEM, mode 0600: keep it secret)
and ``NAME.pub`` (SubjectPublicKeyInfo PEM: give it to operators for
``trust.keys``, or to an authority to certify) and prints the key's id, the
sha256 of its raw public key. An existing key is never overwritten.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from drivebay.sandbox.signing import write_key_pair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the key's name: writes NAME.key and NAME.pub")
    parser.add_argument(
        "--dir", type=Path, default=Path("."), help="where to write them (default: here)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    pair = write_key_pair(args.name, args.dir)
    if args.json:
        found = {"key_id": pair.key_id, "private": str(pair.private), "public": str(pair.public)}
        print(json.dumps(found, indent=2))
        return 0
    print(f"key id {pair.key_id}")
    print(f"  {pair.private}  private key (mode 0600): keep it secret, sign with it")
    print(f"  {pair.public}  public key: for trust.keys, or for an authority to certify")
    return 0
