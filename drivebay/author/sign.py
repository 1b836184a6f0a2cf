"""``drivebay sign BUNDLE --key K [--cert FILE]``: sign a bundle, directory or zip.

The bundle is read and checked as the daemon reads it; then
``META-INF/signature.json`` (``sandbox.signing``) is written into it: into
the directory, or into the zip, whose other members are kept byte for byte
when it had no signature yet (the new member is appended), and re-written
with the same names, order, dates and modes when an old signature is
replaced. The result is read back and verified before the command says
it is done. Signing twice with the same key gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from drivebay.protocol.errors import SigningError
from drivebay.sandbox.bundle_errors import quoted
from drivebay.sandbox.bundle_layout import META_DIR, SIGNATURE_FILE
from drivebay.sandbox.bundle_reader import read_bundle
from drivebay.sandbox.certificates import Certificate, covers, expiry, read_certificate
from drivebay.sandbox.signing import key_id, raw_public, read_private_key, sign_files
from drivebay.sandbox.trust import TrustedKey, TrustPolicy, check_signature

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the zip epoch: signing adds no timestamp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="the bundle: a directory or a .zip")
    parser.add_argument("--key", type=Path, required=True, help="your private key (NAME.key)")
    parser.add_argument(
        "--cert", type=Path, help="your key's certificate from an authority, carried along"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    key = read_private_key(args.key)
    signer = key_id(key.public_key())
    files = read_bundle(args.bundle)
    cert = None if args.cert is None else _certificate(args.cert, signer, files.manifest.name)
    signature = sign_files(files.content, key, cert)
    if args.bundle.is_dir():
        _sign_directory(args.bundle, signature)
    else:
        _sign_zip(args.bundle, signature)
    policy = TrustPolicy(
        "require", {signer: TrustedKey(args.key.name, raw_public(key.public_key()))}
    )
    problem = check_signature(read_bundle(args.bundle), policy, time.time()).problem
    if problem is not None:  # the bundle changed while it was signed
        raise SigningError(f"{args.bundle}: {problem.line}")
    if args.json:
        result = {
            "bundle": str(args.bundle),
            "key_id": signer,
            "files": len(files.content),
            "authority": cert.authority if cert else None,
        }
        print(json.dumps(result, indent=2))
        return 0
    through = f", certified by authority {cert.authority}" if cert else ""
    print(f"{args.bundle}: signed {len(files.content)} files with key {signer}{through}")
    return 0


def _certificate(path: Path, signer: str, name: str) -> Certificate:
    """The certificate in ``path``, if it is for this key and this driver and valid."""
    try:
        with open(path, "rb") as stream:
            cert = read_certificate(stream.read(1024 * 1024))
        ends = expiry(cert)
    except OSError as exc:
        raise SigningError(f"{path}: cannot read ({exc.strerror}); check --cert") from exc
    except ValueError as exc:
        raise SigningError(f"{path}: not a drivebay certificate ({exc}); check --cert") from exc
    if cert.key_id != signer:
        raise SigningError(
            f"{path}: certifies key {cert.key_id[:16]}, not --key's {signer[:16]}; "
            "give the certificate issued for this key"
        )
    if not covers(cert, name):
        patterns = ", ".join(quoted(p) for p in cert.drivers)
        raise SigningError(
            f"{path}: covers drivers {patterns}, not {quoted(name)}; ask the authority for "
            "a certificate that covers this name"
        )
    if ends is not None and ends <= time.time():
        raise SigningError(f"{path}: expired on {cert.expires}; ask the authority for a new one")
    return cert


def _sign_directory(bundle: Path, signature: bytes) -> None:
    target = bundle / SIGNATURE_FILE
    try:
        target.parent.mkdir(exist_ok=True)
        # Written beside the bundle, then renamed in: a daemon watching it
        # never sees a half-written signature.
        with _staging(bundle) as (stream, staging):
            stream.write(signature)
            stream.flush()
            os.chmod(staging, 0o644)
            os.replace(staging, target)
    except OSError as exc:
        raise SigningError(f"{target}: cannot write ({exc.strerror}); check the bundle") from exc


def _sign_zip(bundle: Path, signature: bytes) -> None:
    try:
        with zipfile.ZipFile(bundle) as old:
            signed_before = any(_is_signature(info) for info in old.infolist())
        with _staging(bundle) as (stream, staging):
            if signed_before:
                _rewrite_without_signature(bundle, stream)
            else:
                with open(bundle, "rb") as source:
                    shutil.copyfileobj(source, stream)
            stream.flush()
            with zipfile.ZipFile(staging, "a") as archive:
                archive.writestr(_member(SIGNATURE_FILE), signature, zipfile.ZIP_DEFLATED)
            os.chmod(staging, stat.S_IMODE(os.stat(bundle).st_mode))
            with open(staging, "rb") as written:
                os.fsync(written.fileno())
            os.replace(staging, bundle)
    except OSError as exc:
        raise SigningError(f"{bundle}: cannot write ({exc.strerror}); check the bundle") from exc


def _is_signature(info: zipfile.ZipInfo) -> bool:
    path = "/".join(part for part in info.filename.split("/") if part not in ("", "."))
    return path == SIGNATURE_FILE or (path == META_DIR and info.is_dir())


def _rewrite_without_signature(bundle: Path, stream: IO[bytes]) -> None:
    """Every member but the old signature, with its name, order, date, mode
    and compression method (its compressed bytes may differ)."""
    with zipfile.ZipFile(bundle) as old, zipfile.ZipFile(stream, "w") as new:
        for info in old.infolist():
            if _is_signature(info):
                continue
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.external_attr, copy.create_system = info.external_attr, info.create_system
            copy.comment = info.comment
            new.writestr(copy, old.read(info), info.compress_type)
        new.comment = old.comment


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _FIXED_TIME)
    info.create_system = 3  # unix, so the mode below is read
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


@contextmanager
def _staging(bundle: Path) -> Iterator[tuple[IO[bytes], str]]:
    """A hidden file beside ``bundle`` (the daemon skips hidden names); removed
    unless the caller renamed it into place."""
    fd, staging = tempfile.mkstemp(dir=bundle.absolute().parent, prefix=f".{bundle.name}.")
    try:
        with os.fdopen(fd, "w+b") as stream:
            yield stream, staging
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
