"""Ed25519 keys, key files, and the signature file a signed bundle carries.

A key's id is the sha256 (hex) of its raw 32-byte public key. Key files are
PEM, as OpenSSL writes them: ``NAME.key`` an unencrypted PKCS#8 private key
(``-----BEGIN PRIVATE KEY-----``, mode 0600), ``NAME.pub`` its
SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``);
``openssl pkey -pubin -in NAME.pub -text`` reads the second.

``META-INF/signature.json`` (``SignatureFile``) lists every other file of the
bundle with its sha256, names the signing key and carries the signature and,
optionally, the signer's certificate (``sandbox.certificates``). What is
signed is ``signed_payload``: a version line, then the canonical JSON (keys
sorted, no spaces) of the key id and that listing. A verifier rebuilds the
listing from the files it holds, never from the one in the file, which only
serves to say which file changed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import msgspec
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drivebay.protocol.errors import SigningError
from drivebay.sandbox.bundle_errors import quoted
from drivebay.sandbox.bundle_layout import SIGNATURE_FILE
from drivebay.sandbox.certificates import (
    CERTIFICATE_FORMAT,
    Certificate,
    certificate_payload,
    format_time,
)

SIGNATURE_FORMAT: Final = "drivebay-signature/1"


# -- keys ----------------------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    """The key's id: the sha256 (hex) of its raw 32-byte public key."""
    return hashlib.sha256(raw_public(public)).hexdigest()


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """``text`` decoded from base64; ValueError when it is not base64."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not base64 ({exc})") from exc


def public_from_raw(raw: bytes) -> Ed25519PublicKey:
    """The key of 32 raw bytes; ValueError for any other length."""
    return Ed25519PublicKey.from_public_bytes(raw)


def verifies(public: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    try:
        public.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class KeyPair:
    """The files ``write_key_pair`` made and the key's id."""

    private: Path
    public: Path
    key_id: str


def write_key_pair(name: str, directory: Path) -> KeyPair:
    """Make a new key: ``directory/NAME.key`` (0600) and ``NAME.pub``.

    Raises ``SigningError`` when either file exists (a key is never
    overwritten) or cannot be written.
    """
    if not name or "/" in name or name.startswith("."):
        raise SigningError(f"{quoted(name)} is not a key name; use a plain name like acme-2026")
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    key = Ed25519PrivateKey.generate()
    secret = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path in (private, public):
        if path.exists():
            raise SigningError(f"{path}: exists; choose another name or move the old key away")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_new(private, secret, 0o600)
        _write_new(public, spki, 0o644)
    except OSError as exc:
        raise SigningError(f"{exc.filename}: cannot write ({exc.strerror}); check --dir") from exc
    return KeyPair(private, public, key_id(key.public_key()))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start: a secret is never readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as stream:
        os.fchmod(fd, mode)  # the umask may have taken bits away
        stream.write(data)
        stream.flush()
        os.fsync(fd)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """The private key in ``path`` (PKCS#8 PEM, as ``drivebay key new`` writes).

    Raises ``SigningError`` when it cannot be read, others may read it (as
    ssh does), or it is not an unencrypted Ed25519 private key.
    """
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        hint = "that is a public key: " if b"PUBLIC KEY" in data else ""
        raise SigningError(
            f"{path}: not an unencrypted PEM private key; {hint}"
            "use the NAME.key drivebay key new wrote"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 key; make one with drivebay key new")
    if os.stat(path).st_mode & 0o077:
        raise SigningError(f"{path}: a private key others may read; chmod 600 {path}")
    return key


def read_public_key(path: Path) -> Ed25519PublicKey:
    """The public key in ``path`` (SubjectPublicKeyInfo PEM, ``NAME.pub``).

    Raises ``SigningError`` when it cannot be read or is not an Ed25519
    public key.
    """
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        hint = " (that is the private key: give the .pub)" if b"PRIVATE KEY" in data else ""
        raise SigningError(
            f"{path}: not a PEM public key{hint}; use the NAME.pub drivebay key new wrote"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 key; make one with drivebay key new")
    return key


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(64 * 1024)  # a key file is a few hundred bytes
    except OSError as exc:
        raise SigningError(f"{path}: cannot read ({exc.strerror}); check the path") from exc


# -- the signature file ------------------------------------------------------------------


class FileHash(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    sha256: str


class SignatureFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``META-INF/signature.json``: who signed which bytes."""

    format: Literal["drivebay-signature/1"]
    key_id: str
    files: list[FileHash]
    signature: str  # base64 of the Ed25519 signature of ``signed_payload``
    certificate: Certificate | None = None


class _Signed(msgspec.Struct, frozen=True):
    key_id: str
    files: list[FileHash]


def listing(files: Mapping[str, bytes]) -> list[FileHash]:
    """Every file but the signature, sorted by path, with its sha256."""
    return [
        FileHash(path, hashlib.sha256(data).hexdigest())
        for path, data in sorted(files.items())
        if path != SIGNATURE_FILE
    ]


def signed_payload(signer: str, files: list[FileHash]) -> bytes:
    """The bytes an Ed25519 signature covers: versioned, canonical, unambiguous."""
    body = msgspec.json.encode(_Signed(signer, files), order="sorted")
    return SIGNATURE_FORMAT.encode() + b"\n" + body


def sign_files(
    files: Mapping[str, bytes], key: Ed25519PrivateKey, certificate: Certificate | None = None
) -> bytes:
    """The ``META-INF/signature.json`` of ``files`` signed with ``key``.

    Ed25519 signatures are deterministic: the same files and key give the
    same bytes.
    """
    signer = key_id(key.public_key())
    hashes = listing(files)
    document = SignatureFile(
        format=SIGNATURE_FORMAT,
        key_id=signer,
        files=hashes,
        signature=b64(key.sign(signed_payload(signer, hashes))),
        certificate=certificate,
    )
    return msgspec.json.format(msgspec.json.encode(document, order="sorted"), indent=1) + b"\n"


def read_signature(data: bytes) -> SignatureFile:
    """``data`` decoded as a signature file; ValueError says what is wrong."""
    try:
        return msgspec.json.decode(data, type=SignatureFile)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from exc


# -- certificates ----------------------------------------------------------------------


def issue_certificate(
    vendor: Ed25519PublicKey,
    authority: Ed25519PrivateKey,
    drivers: list[str],
    expires: float | None = None,
) -> Certificate:
    """``authority``'s certificate for ``vendor``'s key, for driver names
    matching ``drivers``, until ``expires`` (epoch seconds; None: never)."""
    unsigned = Certificate(
        format=CERTIFICATE_FORMAT,
        key_id=key_id(vendor),
        public_key=b64(raw_public(vendor)),
        drivers=list(drivers),
        expires=None if expires is None else format_time(expires),
        authority=key_id(authority.public_key()),
        signature="",
    )
    signature = authority.sign(certificate_payload(unsigned))
    return msgspec.structs.replace(unsigned, signature=b64(signature))
