"""The kernel's one door to bundles: ``load_bundle``.

Reading (``bundle_reader``), layout and manifest checks (``bundle_layout``,
``manifest``) and the store (``bundle_store``) are separate steps; the kernel
only needs the composition and the names re-exported here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from drivebay.sandbox.bundle_reader import ReadLimits, read_bundle
from drivebay.sandbox.bundle_store import StoredBundle, remove_staging, store_bundle
from drivebay.sandbox.manifest_schema import Limits, Manifest, PropertySpec
from drivebay.sandbox.pep440 import version_key
from drivebay.sandbox.trust import SignatureCheck, TrustPolicy, enforce

__all__ = [
    "Limits",
    "Manifest",
    "PropertySpec",
    "ReadLimits",
    "SignatureCheck",
    "StoredBundle",
    "TrustPolicy",
    "load_bundle",
    "remove_staging",
    "version_key",
]


def load_bundle(
    path: Path,
    state_dir: Path,
    limits: ReadLimits | None = None,
    trust: TrustPolicy | None = None,
) -> StoredBundle:
    """Verify the bundle dropped at ``path`` and store it under ``state_dir``.

    The signature is checked under ``trust`` on the bytes read, which are
    the bytes stored: nothing can change in between. The returned bundle's
    ``path`` is the read-only copy the driver must run from. Raises
    ``BundleError`` (one line: bundle, file, field, fix) when the bundle is
    rejected, its signature under ``require`` included; nothing is stored
    then. Raises ``KernelError`` when the host is at fault (the state
    directory cannot be written, reading failed with an I/O error...): the
    same bundle may be taken later.
    """
    files = read_bundle(path, limits)
    signature = enforce(files, trust) if trust is not None else None
    return dataclasses.replace(store_bundle(files, state_dir), signature=signature)
