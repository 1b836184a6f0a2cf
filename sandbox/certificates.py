"""Certificates: an authority's signed word that a vendor key may sign some drivers.

A certificate (a ``.cert`` file, JSON) names the vendor's key by id and
carries its raw public key (base64), the driver-name patterns it covers
(``fnmatch``, case-sensitive: ``acme-*``), an optional expiry (UTC, RFC 3339,
``2027-01-01T00:00:00Z``) and the authority's key id; the authority signs
``certificate_payload``: a version line, then the canonical JSON (keys
sorted, no spaces) of every other field. A daemon that trusts the authority
(``trust.authorities``) accepts the vendor's signature on bundles whose
driver name one of the patterns matches, until the expiry.
"""

from __future__ import annotations

import calendar
import fnmatch
import time
from typing import Final, Literal

import msgspec

CERTIFICATE_FORMAT: Final = "drivebay-certificate/1"


class Certificate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: Literal["drivebay-certificate/1"]
    key_id: str  # the vendor key's id
    public_key: str  # the vendor key, raw 32 bytes in base64
    drivers: list[str]  # driver-name patterns (fnmatch)
    expires: str | None  # UTC, 2027-01-01T00:00:00Z; None: never
    authority: str  # the authority key's id
    signature: str  # base64 of the authority's Ed25519 signature of the payload


class _Vouched(msgspec.Struct, frozen=True):
    """What the authority signs: the certificate without its signature."""

    format: str
    key_id: str
    public_key: str
    drivers: list[str]
    expires: str | None
    authority: str


def certificate_payload(cert: Certificate) -> bytes:
    vouched = _Vouched(
        cert.format, cert.key_id, cert.public_key, cert.drivers, cert.expires, cert.authority
    )
    return CERTIFICATE_FORMAT.encode() + b"\n" + msgspec.json.encode(vouched, order="sorted")


def covers(cert: Certificate, name: str) -> bool:
    """Whether one of the certificate's patterns matches the driver ``name``."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in cert.drivers)


def expiry(cert: Certificate) -> float | None:
    """When the certificate expires (epoch seconds); ValueError for a bad date."""
    return None if cert.expires is None else parse_time(cert.expires)


_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def parse_time(text: str) -> float:
    """``2027-01-01T00:00:00Z`` (or a date, ``2027-01-01``: its midnight UTC)
    as epoch seconds; ValueError says what is expected."""
    for form in (_FORMAT, "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(text, form)))
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a date; use 2027-01-31 or 2027-01-31T12:00:00Z (UTC)")


def format_time(epoch: float) -> str:
    return time.strftime(_FORMAT, time.gmtime(epoch))


def read_certificate(data: bytes) -> Certificate:
    """``data`` decoded as a certificate; ValueError says what is wrong."""
    try:
        return msgspec.json.decode(data, type=Certificate)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from exc


def encode_certificate(cert: Certificate) -> bytes:
    return msgspec.json.format(msgspec.json.encode(cert, order="sorted"), indent=1) + b"\n"
