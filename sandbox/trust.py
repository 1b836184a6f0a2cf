"""Whether a bundle's signature is one the daemon trusts (``trust:`` in the config).

``check_signature`` judges a bundle read into memory (``BundleFiles``): the
very bytes the store writes and the driver runs, so nothing can change
between the check and the use. It hashes every file but the signature,
rebuilds the signed listing from those hashes and verifies the Ed25519
signature with a key the policy trusts, itself (``trust.keys``) or through a
certificate of a trusted authority (``trust.authorities``) that covers the
driver's name and has not expired; a key or authority in ``trust.revoked`` is
never trusted. ``enforce`` applies the policy's mode: ``off`` checks
nothing, ``warn`` returns the verdict (the bundle runs, status says why it
should not), ``require`` refuses the bundle with one line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from drivebay.protocol.errors import ConfigError, SigningError
from drivebay.sandbox.bundle_errors import quoted, reject
from drivebay.sandbox.bundle_layout import SIGNATURE_FILE, BundleFiles
from drivebay.sandbox.certificates import Certificate, certificate_payload, covers, expiry

if TYPE_CHECKING:
    from drivebay.sandbox.signing import FileHash, SignatureFile

# ``sandbox.signing`` (and with it ``cryptography``) is imported where a key
# is read or a signature checked: a daemon whose policy is off never loads it.

Mode = Literal["off", "warn", "require"]
KEY_ID = re.compile(r"[0-9a-f]{64}")


def short(key: str) -> str:
    """A key id as refusal lines show it: its first 16 hex digits."""
    return key[:16]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    name: str  # the file it was read from, for describe
    raw: bytes


@dataclass(frozen=True)
class TrustPolicy:
    """The ``trust:`` settings with their key files read: compared by value,
    so a reload that changes a key file changes the policy."""

    mode: Mode = "off"
    keys: Mapping[str, TrustedKey] = field(default_factory=dict)
    authorities: Mapping[str, TrustedKey] = field(default_factory=dict)
    revoked: frozenset[str] = frozenset()


def load_policy(
    mode: Mode, keys: Sequence[str], authorities: Sequence[str], revoked: Sequence[str]
) -> TrustPolicy:
    """The policy with every key file read; ConfigError names the file or
    key id that is wrong."""
    for key in revoked:
        if not KEY_ID.fullmatch(key):
            raise ConfigError(
                f"trust.revoked: {quoted(key)} is not a key id; give the 64 hex digits "
                "drivebay key new printed (sha256 of the raw public key)"
            )
    return TrustPolicy(
        mode=mode,
        keys=_read_keys("trust.keys", keys),
        authorities=_read_keys("trust.authorities", authorities),
        revoked=frozenset(revoked),
    )


def _read_keys(setting: str, paths: Sequence[str]) -> dict[str, TrustedKey]:
    found: dict[str, TrustedKey] = {}
    if not paths:
        return found
    from drivebay.sandbox.signing import key_id, raw_public, read_public_key

    for path in paths:
        try:
            public = read_public_key(Path(path).expanduser())
        except SigningError as exc:
            raise ConfigError(f"{setting}: {exc}") from exc
        found[key_id(public)] = TrustedKey(Path(path).name, raw_public(public))
    return found


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a signature is not trusted."""

    short: str  # what status and avail show: "unsigned", "signature: unknown key 1a2b..."
    file: str  # the file the refusal names ("": the bundle itself)
    line: str  # the problem and its fix


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """A bundle's signature as judged under a policy."""

    key_id: str | None = None  # who signed (None: unsigned, or unreadable)
    key_name: str | None = None  # the trust.keys file of a key trusted as such
    authority: str | None = None  # the authority whose certificate vouched for the key
    authority_name: str | None = None
    drivers: tuple[str, ...] = ()  # the names the certificate covers
    valid_until: float | None = None  # its certificate's expiry, while trusted
    problem: Problem | None = None

    @property
    def warning(self) -> str | None:
        return None if self.problem is None else self.problem.short

    def summary(self) -> str:
        """One line for ``describe``: who signed, through whom, or what is wrong."""
        if self.problem is not None:
            return f"{self.problem.short}, runs under trust.signatures: warn"
        signer = f"signed by key {self.key_id}"
        if self.authority is None:
            return f"{signer} (trusted in trust.keys: {self.key_name})"
        until = "" if self.valid_until is None else f" until {_date(self.valid_until)}"
        patterns = ", ".join(quoted(p) for p in self.drivers)
        return (
            f"{signer}, certified for {patterns}{until} by authority "
            f"{self.authority} ({self.authority_name})"
        )


def enforce(
    bundle: BundleFiles, policy: TrustPolicy, now: float | None = None
) -> SignatureCheck | None:
    """The verdict on ``bundle``'s signature under ``policy``: None when the
    mode is ``off`` (nothing is read). Raises ``BundleError`` under
    ``require`` when the signature is not trusted, with one line saying which
    problem it is and how to fix it."""
    if policy.mode == "off":
        return None
    check = check_signature(bundle, policy, time.time() if now is None else now)
    if check.problem is not None and policy.mode == "require":
        reject(bundle.name, check.problem.file, check.problem.line)
    return check


def check_signature(bundle: BundleFiles, policy: TrustPolicy, now: float) -> SignatureCheck:
    """The verdict on ``bundle``'s signature; ``problem`` says what is wrong."""
    from drivebay.sandbox.signing import (
        listing,
        public_from_raw,
        read_signature,
        signed_payload,
        unb64,
        verifies,
    )

    data = bundle.files.get(SIGNATURE_FILE)
    if data is None:
        return _problem(
            "unsigned",
            "",
            f"not signed; sign it (drivebay sign {bundle.name} --key KEY), "
            "or set trust.signatures to warn or off",
        )
    try:
        document = read_signature(data)
        if not KEY_ID.fullmatch(document.key_id):
            raise ValueError(f"key_id {quoted(document.key_id)} is not 64 hex digits")
        signature = unb64(document.signature)
    except ValueError as exc:
        return _problem(
            "signature: unreadable",
            SIGNATURE_FILE,
            f"not a drivebay signature ({exc}); sign the bundle again with drivebay sign",
        )
    signer = document.key_id
    if signer in policy.revoked:
        return _problem(
            f"signature: revoked key {short(signer)}",
            SIGNATURE_FILE,
            f"signed by key {short(signer)}, which trust.revoked lists; "
            "sign the bundle again with a key that is not revoked",
            signer,
        )
    trusted = policy.keys.get(signer)
    public: bytes | None
    if trusted is not None:
        found = SignatureCheck(signer, key_name=trusted.name)
        public = trusted.raw
    elif document.certificate is not None:
        found, public = _through_certificate(
            document.certificate, signer, bundle.manifest.name, policy, now
        )
    else:
        return _problem(
            f"signature: unknown key {short(signer)}",
            SIGNATURE_FILE,
            f"signed by key {short(signer)}, which the daemon does not trust; add its .pub "
            "to trust.keys, or sign with a certificate (--cert) of an authority in "
            "trust.authorities",
            signer,
        )
    if public is not None:
        actual = listing(bundle.files)
        if not verifies(public_from_raw(public), signature, signed_payload(signer, actual)):
            return _tampered(document, actual, signer)
    return found


def _through_certificate(
    cert: Certificate, signer: str, name: str, policy: TrustPolicy, now: float
) -> tuple[SignatureCheck, bytes | None]:
    """The verdict a certificate gives, and the signer's key when the bundle
    can be checked with it (a problem with the certificate is reported once
    the bundle's bytes are known to be intact)."""
    public, unusable = _certified_key(cert, signer)
    if unusable is not None:
        return unusable, None
    return _vouching(cert, signer, name, policy, now), public


def _certified_key(cert: Certificate, signer: str) -> tuple[bytes, SignatureCheck | None]:
    """The raw key the certificate carries, or why it cannot be used for ``signer``."""
    from drivebay.sandbox.signing import key_id, public_from_raw, unb64

    try:
        public = unb64(cert.public_key)
        matches = cert.key_id == signer and key_id(public_from_raw(public)) == signer
        expiry(cert)
    except ValueError as exc:
        return b"", _problem(
            "signature: unreadable certificate",
            SIGNATURE_FILE,
            f"certificate: {exc}; ask the authority for a new certificate and sign again",
            signer,
        )
    if not matches:
        return public, _problem(
            "signature: certificate for another key",
            SIGNATURE_FILE,
            f"the certificate is for key {short(cert.key_id)}, not the signing key "
            f"{short(signer)}; sign with the certified key, or give that key's certificate",
            signer,
        )
    return public, None


def _vouching(
    cert: Certificate, signer: str, name: str, policy: TrustPolicy, now: float
) -> SignatureCheck:
    """What a readable certificate of ``signer`` says: the authority is
    trusted, signed it, it has not expired and covers ``name``; or which not."""
    from drivebay.sandbox.signing import public_from_raw, unb64, verifies

    issuer, ends = cert.authority, expiry(cert)
    authority = policy.authorities.get(issuer)
    if issuer in policy.revoked or authority is None:
        revoked = issuer in policy.revoked
        how = "which trust.revoked lists" if revoked else "which the daemon does not trust"
        fix = "" if revoked else "add its .pub to trust.authorities, or "
        return _problem(
            f"signature: {'revoked' if revoked else 'unknown'} authority {short(issuer)}",
            SIGNATURE_FILE,
            f"key {short(signer)} is certified by authority {short(issuer)}, {how}; "
            f"{fix}sign with a key the daemon trusts",
            signer,
        )
    try:
        signature = unb64(cert.signature)
    except ValueError:
        signature = b""
    if not verifies(public_from_raw(authority.raw), signature, certificate_payload(cert)):
        return _problem(
            "signature: forged certificate",
            SIGNATURE_FILE,
            f"the certificate of key {short(signer)} does not verify with authority "
            f"{short(issuer)} (edited?); ask the authority for a new certificate",
            signer,
        )
    if ends is not None and ends <= now:
        return _problem(
            f"signature: certificate expired {_date(ends)}",
            SIGNATURE_FILE,
            f"the certificate of key {short(signer)} expired on {_date(ends)}; ask authority "
            f"{short(issuer)} for a new one and sign again with it (--cert)",
            signer,
        )
    if not covers(cert, name):
        patterns = ", ".join(quoted(p) for p in cert.drivers)
        return _problem(
            f"signature: certificate does not cover {quoted(name)}",
            SIGNATURE_FILE,
            f"the certificate of key {short(signer)} covers drivers {patterns}, not "
            f"{quoted(name)}; sign with a key certified for this name, or ask the authority",
            signer,
        )
    return SignatureCheck(
        signer,
        authority=issuer,
        authority_name=authority.name,
        drivers=tuple(cert.drivers),
        valid_until=ends,
    )


def _tampered(document: SignatureFile, actual: list[FileHash], signer: str) -> SignatureCheck:
    """The problem of a signature that does not verify: which file changed,
    was added or removed, as far as the signed listing tells."""
    signed = {entry.path: entry.sha256 for entry in document.files}
    now = {entry.path: entry.sha256 for entry in actual}
    differences = [
        (path, "changed since" if path in signed else "added after")
        for path, sha in now.items()
        if signed.get(path) != sha
    ]
    differences += [(path, "removed after") for path in signed if path not in now]
    if not differences:
        return _problem(
            "signature: does not verify",
            SIGNATURE_FILE,
            f"the signature does not verify with key {short(signer)} (edited?); "
            "sign the bundle again",
            signer,
        )
    path, how = sorted(differences)[0]
    more = len(differences) - 1
    others = f" ({more} more file{'s' if more > 1 else ''} too)" if more else ""
    return _problem(
        f"signature: {path} {how.split()[0]}",
        path,
        f"{how} the bundle was signed{others}; rebuild it from its source, "
        "or sign it again if the change is yours",
        signer,
    )


def _problem(short: str, file: str, line: str, signer: str | None = None) -> SignatureCheck:
    return SignatureCheck(signer, problem=Problem(short, file, line))


def _date(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
