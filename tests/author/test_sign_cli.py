"""``drivebay key new``, ``key certify`` and ``sign``, run as the console script."""

from __future__ import annotations

import hashlib
import json
import stat
import time
import zipfile
from pathlib import Path

import pytest

from drivebay.sandbox.bundle_layout import SIGNATURE_FILE
from drivebay.sandbox.bundle_reader import read_bundle
from drivebay.sandbox.signing import raw_public, read_public_key
from drivebay.sandbox.trust import check_signature, load_policy
from tests.author.run_cli import ok, refused
from tests.sandbox.bundles import make_bundle, zip_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """acme.key/.pub here, platform.key/.pub in auth/, acme.cert for 'acme-*'."""
    root = tmp_path_factory.mktemp("keys")
    ok("key", "new", "acme", cwd=root)
    ok("key", "new", "platform", "--dir", root / "auth")
    ok(
        "key", "certify", root / "acme.pub", "--authority", root / "auth/platform.key",
        "--drivers", "acme-*", "--expires", "2099-12-31", "-o", root / "acme.cert",
    )  # fmt: skip
    return root


def test_key_new_writes_a_secret_key_and_prints_its_id(keys: Path) -> None:
    assert stat.S_IMODE((keys / "acme.key").stat().st_mode) == 0o600
    assert (keys / "acme.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    found = json.loads(ok("key", "new", "other", "--dir", keys, "--json"))
    raw = raw_public(read_public_key(keys / "other.pub"))
    assert found["key_id"] == hashlib.sha256(raw).hexdigest()
    assert refused("key", "new", "other", "--dir", keys).endswith(
        "other.key: exists; choose another name or move the old key away"
    )


def test_certify_vouches_for_a_key_for_names(keys: Path) -> None:
    cert = json.loads((keys / "acme.cert").read_text())
    assert cert["drivers"] == ["acme-*"] and cert["expires"] == "2099-12-31T00:00:00Z"
    assert (
        cert["key_id"] == hashlib.sha256(raw_public(read_public_key(keys / "acme.pub"))).hexdigest()
    )
    line = refused(
        "key", "certify", keys / "acme.pub", "--authority", keys / "auth/platform.key",
        "--drivers", "acme-*", "--expires", "next year", "-o", keys / "x.cert",
    )  # fmt: skip
    assert line == (
        "drivebay: --expires: 'next year' is not a date; use 2027-01-31 or "
        "2027-01-31T12:00:00Z (UTC)"
    )


def test_sign_a_directory_and_a_zip_which_keeps_its_members_byte_for_byte(
    keys: Path, tmp_path: Path
) -> None:
    policy = load_policy("require", [], [str(keys / "auth/platform.pub")], [])
    directory = make_bundle(tmp_path, "acme-disk")
    archive = zip_bundle(directory)
    ok("sign", directory, "--key", keys / "acme.key", "--cert", keys / "acme.cert")
    assert check_signature(read_bundle(directory), policy, time.time()).problem is None

    before = archive.read_bytes()
    with zipfile.ZipFile(archive) as unsigned:
        members_end = unsigned.start_dir  # type: ignore[attr-defined]
    out = ok("sign", archive, "--key", keys / "acme.key", "--cert", keys / "acme.cert")
    assert out.startswith(f"{archive}: signed 3 files with key ")
    after = archive.read_bytes()
    assert after[:members_end] == before[:members_end]
    assert check_signature(read_bundle(archive), policy, time.time()).problem is None

    # Signing again replaces the signature (one member), and gives the same bytes.
    ok("sign", archive, "--key", keys / "acme.key", "--cert", keys / "acme.cert")
    with zipfile.ZipFile(archive) as signed:
        assert [i.filename for i in signed.infolist()].count(SIGNATURE_FILE) == 1
    assert read_bundle(archive).files == read_bundle(directory).files


def test_sign_refuses_a_certificate_for_other_names_or_keys(keys: Path, tmp_path: Path) -> None:
    zeta = make_bundle(tmp_path, "zeta-disk")
    assert refused("sign", zeta, "--key", keys / "acme.key", "--cert", keys / "acme.cert") == (
        f"drivebay: {keys / 'acme.cert'}: covers drivers 'acme-*', not 'zeta-disk'; ask the "
        "authority for a certificate that covers this name"
    )
    line = refused("sign", zeta, "--key", keys / "auth/platform.key", "--cert", keys / "acme.cert")
    assert "certifies key" in line and "give the certificate issued for this key" in line
    assert not (zeta / "META-INF").exists()
