"""Signing and verifying bundles in memory: every way to break a signature is
caught and named, and the policy's mode decides what a problem does."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivebay.protocol.errors import BundleError, ConfigError, SigningError
from drivebay.sandbox.bundle_layout import SIGNATURE_FILE, BundleFiles, check_layout
from drivebay.sandbox.bundle_store import bundle_digest, store_bundle
from drivebay.sandbox.certificates import Certificate, encode_certificate, read_certificate
from drivebay.sandbox.signing import (
    issue_certificate,
    key_id,
    raw_public,
    read_private_key,
    read_public_key,
    read_signature,
    sign_files,
    write_key_pair,
)
from drivebay.sandbox.trust import (
    Mode,
    TrustedKey,
    TrustPolicy,
    check_signature,
    enforce,
    load_policy,
)

NOW = 1_800_000_000.0  # 2027-01-15
DAY = 86400.0
VENDOR = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
AUTHORITY = Ed25519PrivateKey.generate()


def files_of(name: str = "acme-disk") -> dict[str, bytes]:
    module = name.replace("-", "_")
    manifest = (
        f"name: {name}\nversion: 1.0.0\ncategory: storage\n"
        f"description: a test driver\nentrypoint: {module}:Driver\n"
    )
    return {
        "driver.yaml": manifest.encode(),
        "LICENSE": b"Apache-2.0\n",
        f"src/{module}.py": b"class Driver:\n    pass\n",
        "lib/dep-1.0-py3-none-any.whl": b"PK\x03\x04 not really a wheel",
    }


def bundle(files: dict[str, bytes]) -> BundleFiles:
    return check_layout("acme-disk-1.0.0.zip", Path("/drop/acme-disk-1.0.0.zip"), files, set())


def signed(
    key: Ed25519PrivateKey = VENDOR, cert: Certificate | None = None, name: str = "acme-disk"
) -> dict[str, bytes]:
    files = files_of(name)
    return {**files, SIGNATURE_FILE: sign_files(files, key, cert)}


def trusting(
    *keys: Ed25519PrivateKey, mode: Mode = "require", revoked: frozenset[str] = frozenset()
) -> TrustPolicy:
    found = {key_id(k.public_key()): TrustedKey("k.pub", raw_public(k.public_key())) for k in keys}
    return TrustPolicy(mode=mode, keys=found, revoked=revoked)


def authorities(*keys: Ed25519PrivateKey) -> dict[str, TrustedKey]:
    return {key_id(k.public_key()): TrustedKey("a.pub", raw_public(k.public_key())) for k in keys}


def problem(files: dict[str, bytes], policy: TrustPolicy) -> tuple[str, str, str] | None:
    found = check_signature(bundle(files), policy, NOW).problem
    return None if found is None else (found.short, found.file, found.line)


def test_a_bundle_signed_by_a_trusted_key_verifies() -> None:
    check = check_signature(bundle(signed()), trusting(VENDOR), NOW)
    assert check.problem is None
    assert check.key_id == key_id(VENDOR.public_key())
    assert check.summary() == f"signed by key {check.key_id} (trusted in trust.keys: k.pub)"


def test_signing_is_deterministic_and_lists_every_other_file() -> None:
    assert signed() == signed()
    document = read_signature(signed()[SIGNATURE_FILE])
    assert [entry.path for entry in document.files] == sorted(files_of())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f.update({"LICENSE": b"MIT\n"}), ("signature: LICENSE changed", "LICENSE")),
        (
            lambda f: f.update({"src/acme_disk.py": f["src/acme_disk.py"] + b" "}),
            ("signature: src/acme_disk.py changed", "src/acme_disk.py"),
        ),
        (
            lambda f: f.update({"src/extra.py": b""}),
            ("signature: src/extra.py added", "src/extra.py"),
        ),
        (
            lambda f: f.pop("lib/dep-1.0-py3-none-any.whl"),
            ("signature: lib/dep-1.0-py3-none-any.whl removed", "lib/dep-1.0-py3-none-any.whl"),
        ),
    ],
    ids=["changed", "one-byte-added", "file-added", "file-removed"],
)
def test_any_changed_added_or_removed_byte_or_file_breaks_it(
    change: Callable[[dict[str, bytes]], object], expected: tuple[str, str]
) -> None:
    files = signed()
    change(files)
    short, file, line = problem(files, trusting(VENDOR)) or ("", "", "")
    assert (short, file) == expected
    assert "the bundle was signed" in line and "sign it again" in line


def test_an_edited_signature_does_not_verify() -> None:
    files = signed()
    document = read_signature(files[SIGNATURE_FILE])
    forged = msgspec.structs.replace(document, signature=document.signature[::-1])
    files[SIGNATURE_FILE] = msgspec.json.encode(forged)
    assert problem(files, trusting(VENDOR)) is not None
    assert problem(files, trusting(VENDOR))[0] in (
        "signature: does not verify",
        "signature: unreadable",  # the reversed base64 may not decode
    )


def test_a_listing_edited_to_match_a_tampered_file_still_fails() -> None:
    files = signed()
    files["LICENSE"] = b"MIT\n"
    document = read_signature(files[SIGNATURE_FILE])
    relisted = read_signature(sign_files(files, OTHER))  # the right hashes, another key
    files[SIGNATURE_FILE] = msgspec.json.encode(
        msgspec.structs.replace(document, files=relisted.files)
    )
    assert problem(files, trusting(VENDOR))[:2] == (
        "signature: does not verify",
        SIGNATURE_FILE,
    )


def test_unsigned_unknown_revoked_and_unreadable() -> None:
    vendor = key_id(VENDOR.public_key())
    assert problem(files_of(), trusting(VENDOR))[:2] == ("unsigned", "")
    assert problem(signed(OTHER), trusting(VENDOR))[0] == (
        f"signature: unknown key {key_id(OTHER.public_key())[:16]}"
    )
    revoked = trusting(VENDOR, revoked=frozenset({vendor}))
    assert problem(signed(), revoked)[0] == f"signature: revoked key {vendor[:16]}"
    garbage = {**files_of(), SIGNATURE_FILE: b"{not json"}
    assert problem(garbage, trusting(VENDOR))[:2] == ("signature: unreadable", SIGNATURE_FILE)


def cert(
    drivers: list[str] | None = None,
    expires: float | None = NOW + DAY,
    key: Ed25519PrivateKey = VENDOR,
) -> Certificate:
    return issue_certificate(key.public_key(), AUTHORITY, drivers or ["acme-*"], expires)


def test_a_certificate_of_a_trusted_authority_vouches_for_matching_names_only() -> None:
    policy = TrustPolicy(mode="require", authorities=authorities(AUTHORITY))
    check = check_signature(bundle(signed(cert=cert())), policy, NOW)
    assert check.problem is None
    assert check.authority == key_id(AUTHORITY.public_key())
    assert check.valid_until == NOW + DAY
    assert "certified for 'acme-*' until 2027-01-16" in check.summary()
    other = problem(signed(cert=cert(), name="zeta-disk"), policy)
    assert other is not None and other[0] == "signature: certificate does not cover 'zeta-disk'"
    assert "covers drivers 'acme-*', not 'zeta-disk'" in other[2]


def test_certificate_problems_are_named() -> None:
    policy = TrustPolicy(mode="require", authorities=authorities(AUTHORITY))
    expired = problem(signed(cert=cert(expires=NOW - DAY)), policy)
    assert expired is not None and expired[0].startswith(
        "signature: certificate expired 2027-01-14"
    )
    assert "ask authority" in expired[2]
    forged = msgspec.structs.replace(cert(), drivers=["*"])
    assert problem(signed(cert=forged), policy)[0] == "signature: forged certificate"
    nobody = TrustPolicy(mode="require")
    authority = key_id(AUTHORITY.public_key())[:16]
    assert problem(signed(cert=cert()), nobody)[0] == f"signature: unknown authority {authority}"
    revoked = TrustPolicy(
        mode="require",
        authorities=authorities(AUTHORITY),
        revoked=frozenset({key_id(AUTHORITY.public_key())}),
    )
    assert problem(signed(cert=cert()), revoked)[0] == f"signature: revoked authority {authority}"
    for_other = problem(signed(cert=cert(key=OTHER)), policy)
    assert for_other is not None and for_other[0] == "signature: certificate for another key"


def test_a_tampered_file_is_named_before_a_certificate_problem() -> None:
    policy = TrustPolicy(mode="require", authorities=authorities(AUTHORITY))
    files = signed(cert=cert(expires=NOW - DAY))
    files["LICENSE"] = b"MIT\n"
    assert problem(files, policy)[0] == "signature: LICENSE changed"


def test_the_mode_decides_off_warn_require() -> None:
    tampered = signed()
    tampered["LICENSE"] = b"MIT\n"
    assert enforce(bundle(tampered), trusting(VENDOR, mode="off"), NOW) is None
    warned = enforce(bundle(tampered), trusting(VENDOR, mode="warn"), NOW)
    assert warned is not None and warned.warning == "signature: LICENSE changed"
    assert warned.summary() == "signature: LICENSE changed, runs under trust.signatures: warn"
    with pytest.raises(BundleError) as refused:
        enforce(bundle(tampered), trusting(VENDOR), NOW)
    assert str(refused.value) == (
        "acme-disk-1.0.0.zip: LICENSE: changed since the bundle was signed; rebuild it from "
        "its source, or sign it again if the change is yours"
    )
    with pytest.raises(BundleError, match=r"^acme-disk-1.0.0.zip: not signed; sign it \(dri"):
        enforce(bundle(files_of()), trusting(VENDOR), NOW)


def test_the_signature_is_outside_the_digest_and_the_store(tmp_path: Path) -> None:
    plain, sealed = bundle(files_of()), bundle(signed())
    assert bundle_digest(plain.files) == bundle_digest(sealed.files)
    stored = store_bundle(sealed, tmp_path)
    assert stored.digest == store_bundle(plain, tmp_path).digest
    assert not (stored.path / "META-INF").exists()


def test_meta_inf_holds_only_the_signature() -> None:
    with pytest.raises(BundleError, match=r"META-INF/MANIFEST\.MF: META-INF/ holds only"):
        bundle({**signed(), "META-INF/MANIFEST.MF": b"x"})


def test_key_files_and_policy_loading(tmp_path: Path) -> None:
    pair = write_key_pair("acme", tmp_path)
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert key_id(read_public_key(pair.public)) == pair.key_id
    assert key_id(read_private_key(pair.private).public_key()) == pair.key_id
    with pytest.raises(SigningError, match=r"acme\.key: exists"):
        write_key_pair("acme", tmp_path)
    os.chmod(pair.private, 0o644)
    with pytest.raises(SigningError, match="others may read; chmod 600"):
        read_private_key(pair.private)
    policy = load_policy("warn", [str(pair.public)], [], [])
    assert list(policy.keys) == [pair.key_id] and policy.keys[pair.key_id].name == "acme.pub"
    with pytest.raises(ConfigError, match=r"trust.keys: .*acme.key: not a PEM public key \(that"):
        load_policy("warn", [str(pair.private)], [], [])
    with pytest.raises(ConfigError, match=r"trust\.authorities: .*nope\.pub: cannot read"):
        load_policy("warn", [], [str(tmp_path / "nope.pub")], [])
    with pytest.raises(ConfigError, match=r"trust\.revoked: '1a2b' is not a key id"):
        load_policy("warn", [], [], ["1a2b"])


def test_a_certificate_round_trips_through_its_file() -> None:
    issued = cert()
    assert read_certificate(encode_certificate(issued)) == issued
