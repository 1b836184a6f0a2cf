"""The ``cluster:`` section of the daemon's config: which PostgreSQL database
the nodes share, this node's name, and the lease timings (docs/cluster.md).

Only msgspec here: ``drivebayctl`` reads the same config and must not load
the database client. Every check is one line that says what to change.
"""

from __future__ import annotations

import re
from typing import Annotated, Final
from urllib.parse import urlsplit

import msgspec

# A node's id names its notification channel ("drivebay.node.<id>"), and
# PostgreSQL's channel names end at 63 bytes.
NODE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
SCHEMES: Final = ("postgresql", "postgres")


class ClusterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``cluster: {database, node_id, lease_s, renew_s, grace_s}``.

    A node owns a resource for ``lease_s`` past each renewal (in the
    database's time), renews every ``renew_s``, and stops dispatching
    ``grace_s`` before its lease could have ended (on its own monotonic
    clock): a renewal must therefore come before ``lease_s - grace_s``.
    """

    database: str  # postgresql://USER@HOST/DB (libpq's URL; a password is better in ~/.pgpass)
    node_id: str
    lease_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0
    renew_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    grace_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0

    def __post_init__(self) -> None:
        # msgspec reports a ValueError raised here as "cluster: <message>".
        if urlsplit(self.database).scheme not in SCHEMES:
            raise ValueError(
                f"database: {shown_database(self.database)!r} is not a PostgreSQL URL; "
                "write postgresql://USER@HOST:5432/DATABASE"
            )
        if not NODE_ID.fullmatch(self.node_id):
            raise ValueError(
                f"node_id: {self.node_id[:60]!r} is not a node id; use 1 to 48 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit, unique per node"
            )
        if self.grace_s >= self.lease_s:
            raise ValueError(
                f"grace_s ({self.grace_s:g}) must be less than lease_s ({self.lease_s:g}); "
                "lower grace_s or raise lease_s"
            )
        if self.renew_s >= self.lease_s - self.grace_s:
            raise ValueError(
                f"renew_s ({self.renew_s:g}) must be less than lease_s - grace_s "
                f"({self.lease_s:g} - {self.grace_s:g}), or a node stops between two "
                "renewals; lower renew_s or grace_s, or raise lease_s"
            )

    @property
    def fence_s(self) -> float:
        """How long after sending a renewal a node may go on dispatching."""
        return self.lease_s - self.grace_s


def shown_database(url: str) -> str:
    """``url`` with its password (if any: after the user, or libpq's
    ``password=`` query parameter) replaced by ``***``, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is not None:
        url = url.replace(f":{parts.password}@", ":***@", 1)
    base, mark, query = url.partition("?")
    if not mark:
        return url
    pieces = (
        "password=***" if piece.partition("=")[0] == "password" else piece
        for piece in query.split("&")
    )
    return f"{base}?{'&'.join(pieces)}"
