"""The registry judges signatures as it reads bundles: a new trust policy (a
reload) judges every known bundle again, and a certificate's expiry does
too once it comes. Real files and keys, no daemon."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivebay.kernel.drivers.registry import Registry
from drivebay.sandbox.bundle_layout import SIGNATURE_FILE
from drivebay.sandbox.bundle_reader import read_bundle
from drivebay.sandbox.signing import issue_certificate, key_id, raw_public, sign_files
from drivebay.sandbox.trust import TrustedKey, TrustPolicy
from tests.helpers import run
from tests.sandbox.bundles import make_bundle

VENDOR = Ed25519PrivateKey.generate()
AUTHORITY = Ed25519PrivateKey.generate()


def sign(directory: Path, cert_expires: float | None = None) -> Path:
    cert = None
    if cert_expires is not None:
        cert = issue_certificate(VENDOR.public_key(), AUTHORITY, ["acme-*"], cert_expires)
    files = read_bundle(directory).files
    (directory / "META-INF").mkdir()
    (directory / SIGNATURE_FILE).write_bytes(sign_files(files, VENDOR, cert))
    return directory


def policy(mode: str, *, vendor: bool = True) -> TrustPolicy:
    def trusted(key: Ed25519PrivateKey) -> dict[str, TrustedKey]:
        public = key.public_key()
        return {key_id(public): TrustedKey("x.pub", raw_public(public))}

    return TrustPolicy(
        mode=mode,  # type: ignore[arg-type]
        keys=trusted(VENDOR) if vendor else {},
        authorities=trusted(AUTHORITY),
    )


def verdicts(registry: Registry) -> dict[str, str | None]:
    found = {}
    for path, entry in registry.entries.items():
        signature = entry.bundle.signature if entry.bundle else None
        found[path.name] = registry.verdict(entry) or (signature and signature.warning)
    return found


def test_a_new_policy_judges_every_known_bundle_again(tmp_path: Path) -> None:
    drivers = tmp_path / "drivers"
    sign(make_bundle(drivers, "acme-disk"))
    make_bundle(drivers, "acme-net")
    registry = Registry(drivers, tmp_path / "state", settle_s=0, trust=policy("require"))

    run(registry.rescan())
    refused = verdicts(registry)
    assert refused["acme-disk-1.0.0"] is None
    assert refused["acme-net-1.0.0"] == (
        "acme-net-1.0.0: not signed; sign it (drivebay sign acme-net-1.0.0 --key KEY), "
        "or set trust.signatures to warn or off"
    )

    registry.trust = policy("warn")
    assert run(registry.rescan())
    assert verdicts(registry) == {"acme-disk-1.0.0": None, "acme-net-1.0.0": "unsigned"}
    assert set(registry.versions()) == {"acme-disk", "acme-net"}

    registry.trust = policy("require", vendor=False)  # the vendor's key no longer trusted
    assert run(registry.rescan())
    assert verdicts(registry)["acme-disk-1.0.0"].startswith(  # type: ignore[union-attr]
        "acme-disk-1.0.0: META-INF/signature.json: signed by key "
    )
    assert registry.versions() == {}

    registry.trust = policy("off", vendor=False)
    assert run(registry.rescan())
    assert verdicts(registry) == {"acme-disk-1.0.0": None, "acme-net-1.0.0": None}
    assert not run(registry.rescan())  # judged: nothing is read again


def test_a_certificate_that_expires_is_judged_again_then(tmp_path: Path) -> None:
    drivers = tmp_path / "drivers"
    expires = math.floor(time.time()) + 2.0  # certificates count whole seconds
    sign(make_bundle(drivers, "acme-disk"), cert_expires=expires)
    registry = Registry(
        drivers, tmp_path / "state", settle_s=0, trust=policy("require", vendor=False)
    )
    run(registry.rescan())
    assert verdicts(registry) == {"acme-disk-1.0.0": None}
    wait = registry.look_again_in()
    assert wait is not None and wait <= expires - time.time() + 0.06

    async def when_due() -> bool:
        await asyncio.sleep(wait)  # what the kernel's call_later waits for
        return await registry.rescan()

    assert run(when_due())
    assert "certificate of key" in verdicts(registry)["acme-disk-1.0.0"]  # type: ignore[operator]
    assert registry.look_again_in() is None
