"""``drivebay repo timestamp DIR``: renew only the timestamp (run it from a timer).

Clients refuse an expired timestamp (a frozen repository); renewing it
signs nothing else, so the timestamp key is the only one a timer needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drivebay.author.tuf_repo import Repository, parse_duration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR")
    parser.add_argument("--keys", type=Path, metavar="KEYDIR", help="default: as repo init said")
    parser.add_argument(
        "--expires", metavar="DURATION", help="how long it is valid (default 1d; 30s, 12h, 7d)"
    )


def run(args: argparse.Namespace) -> int:
    repo = Repository.open(args.dir.absolute(), args.keys)
    expires = parse_duration(args.expires.rpartition("=")[2]) if args.expires else None
    print(f"timestamp {repo.timestamp(expires)}")
    return 0
