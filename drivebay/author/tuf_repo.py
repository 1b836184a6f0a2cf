"""A drivebay repository on disk: TUF metadata written with ``tuf.api.metadata``.

The served tree (``DIR``) is what ``tuf.ngclient`` expects with consistent
snapshots::

    DIR/metadata/1.root.json, 2.root.json ...   every root, the chain a client follows
    DIR/metadata/root.json                      the newest root (to hand to operators)
    DIR/metadata/timestamp.json
    DIR/metadata/N.snapshot.json, N.targets.json, N.VENDOR.json
    DIR/targets/NAME/SHA256.NAME-VERSION.zip

The private keys live in ``KEYDIR`` (mode 0700), never in ``DIR``:
``ROLE.key`` for root, targets, snapshot and timestamp. ``DIR/.drivebay-repo.json``
remembers where ``KEYDIR`` is (a path, no secret), so later commands need
only ``DIR``; ``--keys`` overrides it.

A target's custom metadata carries the bundle's ``name``, ``version``,
``category`` and ``python`` under ``drivebay``: a client lists what a
repository offers from the targets metadata alone.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from drivebay.protocol.errors import DrivebayError
from drivebay.sandbox.atomic_files import write_whole
from drivebay.sandbox.signing import key_id, read_private_key, read_public_key, write_key_pair

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
POINTER = ".drivebay-repo.json"
DEFAULT_EXPIRES: dict[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
CUSTOM = "drivebay"  # the key of a target's custom metadata


class RepoError(DrivebayError):
    """A repository command cannot do what it was asked; the line says how to fix it."""


# -- keys ------------------------------------------------------------------------------


def tuf_key(public: Ed25519PublicKey) -> SSlibKey:
    """The TUF form of a key; its id is the one bundle signatures use."""
    return SSlibKey.from_crypto(public, keyid=key_id(public), scheme="ed25519")


def new_key(path: Path) -> CryptoSigner:
    """Make an Ed25519 key pair as ``drivebay key new`` does: ``path`` (PKCS#8
    PEM, mode 0600) and ``path.with_suffix('.pub')``; never over an old key."""
    write_key_pair(path.stem, path.parent)
    return load_signer(path)


def load_signer(path: Path) -> CryptoSigner:
    """The signer of the private key file at ``path`` (``SigningError`` says why not)."""
    private = read_private_key(path)
    return CryptoSigner(private, tuf_key(private.public_key()))


def load_public(path: Path) -> SSlibKey:
    """The TUF key of the public key file at ``path`` (``SigningError`` says why not)."""
    return tuf_key(read_public_key(path))


# -- durations -----------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``10m``, ``12h``, ``7d``, ``2w``, ``1y``, or a number of seconds."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdwy]?)", text.strip())
    if not found:
        raise RepoError(f"{text!r} is not a duration; write e.g. 30s, 10m, 12h, 7d, 1y")
    return timedelta(seconds=float(found[1]) * _UNITS[found[2] or "s"])


def parse_expires(
    items: list[str] | None, roles: tuple[str, ...] = TOP_ROLES
) -> dict[str, timedelta]:
    """``--expires ROLE=DURATION`` items as a map (a bare DURATION: every role named)."""
    found: dict[str, timedelta] = {}
    for item in items or []:
        role, sep, text = item.rpartition("=")
        if not sep:
            for each in roles:
                found[each] = parse_duration(text)
            continue
        if role not in roles:
            raise RepoError(
                f"--expires {item}: unknown role {role!r}; use one of {', '.join(roles)}"
            )
        found[role] = parse_duration(text)
    return found


def expiry(delta: timedelta) -> datetime:
    return (datetime.now(UTC) + delta).replace(microsecond=0)


# -- files -----------------------------------------------------------------------------


SERIALIZER = JSONSerializer(compact=False)


def _numbered(folder: Path, role: str) -> int:
    """The highest N of ``N.ROLE.json`` in ``folder`` (0: none)."""
    versions = [
        int(path.name.split(".", 1)[0])
        for path in folder.glob(f"*.{role}.json")
        if path.name.split(".", 1)[0].isdigit()
    ]
    return max(versions, default=0)


class Repository:
    """The metadata of the repository in ``root_dir``, signed with keys from ``keys``."""

    def __init__(self, root_dir: Path, keys: Path) -> None:
        self.dir = root_dir
        self.keys = keys
        self.metadata_dir = root_dir / "metadata"
        self.targets_dir = root_dir / "targets"

    # -- opening ------------------------------------------------------------------

    @classmethod
    def open(cls, root_dir: Path, keys: Path | None = None) -> Repository:
        """The repository at ``root_dir``; its keys from ``keys`` or from where
        ``repo init`` put them. RepoError when it is not a repository."""
        if not (root_dir / "metadata" / "1.root.json").is_file():
            raise RepoError(f"{root_dir}: not a repository; create one with drivebay repo init")
        if keys is None:
            try:
                keys = Path(json.loads((root_dir / POINTER).read_text())["keys"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RepoError(
                    f"{root_dir}: does not say where its keys are; pass --keys KEYDIR"
                ) from exc
        return cls(root_dir, keys)

    def load(self, role: str) -> Metadata[Any]:
        """The newest metadata of ``role`` written here (published or not)."""
        if role == "timestamp":
            path = self.metadata_dir / "timestamp.json"
        else:
            path = self.metadata_dir / f"{_numbered(self.metadata_dir, role)}.{role}.json"
        try:
            return Metadata.from_file(str(path))
        except OSError as exc:
            raise RepoError(f"{path}: cannot read: {exc.strerror}; is this a repository?") from exc

    def has(self, role: str) -> bool:
        """Has metadata of ``role`` been written (a vendor's, before its first add: no)."""
        return _numbered(self.metadata_dir, role) > 0

    def root(self) -> Metadata[Root]:
        return self.load("root")

    def signer(self, role: str) -> CryptoSigner:
        return load_signer(self.keys / f"{role}.key")

    # -- writing ------------------------------------------------------------------

    def write(
        self,
        role: str,
        metadata: Metadata[Any],
        signers: list[CryptoSigner],
        expires: timedelta | None = None,
        bump: bool = True,
    ) -> Path:
        """Sign ``metadata`` of ``role`` (a new version unless ``bump`` is false)
        and write it where a client looks for it."""
        signed: Signed = metadata.signed
        if bump:
            signed.version += 1
        signed.expires = expiry(expires or DEFAULT_EXPIRES.get(role, DEFAULT_EXPIRES["targets"]))
        metadata.signatures.clear()
        for signer in signers:
            metadata.sign(signer, append=True)
        data = metadata.to_bytes(SERIALIZER)
        if role == "timestamp":
            path = self.metadata_dir / "timestamp.json"
        else:
            path = self.metadata_dir / f"{signed.version}.{role}.json"
        write_whole(path, data)
        if role == "root":
            write_whole(self.metadata_dir / "root.json", data)
        return path

    def targets_roles(self) -> list[str]:
        """``targets`` and every role it delegates to that has metadata yet."""
        delegations = self.load("targets").signed.delegations
        roles = list(delegations.roles) if delegations and delegations.roles else []
        return ["targets", *(role for role in roles if self.has(role))]

    def publish(self, expires: dict[str, timedelta] | None = None) -> tuple[int, int]:
        """A new snapshot naming the newest version of every targets role, and a
        new timestamp naming it; returns their versions."""
        expires = expires or {}
        snapshot: Metadata[Snapshot] = self.load("snapshot")
        snapshot.signed.meta = {
            f"{role}.json": MetaFile(version=_numbered(self.metadata_dir, role))
            for role in self.targets_roles()
        }
        self.write("snapshot", snapshot, [self.signer("snapshot")], expires.get("snapshot"))
        timestamp = self.timestamp(expires.get("timestamp"))
        return snapshot.signed.version, timestamp

    def timestamp(self, expires: timedelta | None = None) -> int:
        """A new timestamp naming the newest snapshot; returns its version."""
        timestamp: Metadata[Timestamp] = self.load("timestamp")
        timestamp.signed.snapshot_meta = MetaFile(version=_numbered(self.metadata_dir, "snapshot"))
        self.write("timestamp", timestamp, [self.signer("timestamp")], expires)
        return timestamp.signed.version
