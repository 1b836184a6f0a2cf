"""``drivebay repo publish DIR``: sign a new snapshot and timestamp.

What ``repo add`` wrote becomes visible to clients only now, all at once: the
snapshot names the newest version of every targets role, the timestamp names
that snapshot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drivebay.author.tuf_repo import Repository, parse_expires


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR")
    parser.add_argument("--keys", type=Path, metavar="KEYDIR", help="default: as repo init said")
    parser.add_argument(
        "--expires",
        action="append",
        metavar="ROLE=DURATION",
        help="snapshot=7d, timestamp=1d (the defaults); 30s, 10m, 12h, 7d, 1y",
    )


def run(args: argparse.Namespace) -> int:
    repo = Repository.open(args.dir.absolute(), args.keys)
    expires = parse_expires(args.expires, ("snapshot", "timestamp"))
    snapshot, timestamp = repo.publish(expires)
    print(f"published snapshot {snapshot}, timestamp {timestamp}")
    return 0
