"""The content-addressed, read-only store of accepted bundles.

An accepted bundle is written to ``<state>/bundles/<sha256>/`` and its driver
always runs from there: editing or deleting the dropped file cannot change a
running driver, and the same content dropped twice is stored once.

The digest covers a canonical listing of the bundle (sorted paths, each with
its length and bytes), so it names the content, not the archive's packaging
(zip or directory, timestamps, compression). The signature
(``META-INF/signature.json``) is packaging too: it is neither hashed nor
stored, so signing a bundle gives the same digest, the same stored copy and
the same environment. A copy appears atomically: it is
written and fsynced in a private staging directory next to its final place,
made read-only (files 0o444, directories 0o555), then renamed. Two processes
storing the same bundle at once both succeed; one rename wins, the other
finds the copy in place and drops its own. A ``<sha256>`` directory therefore
always holds a complete copy.
"""

from __future__ import annotations

import compileall
import contextlib
import errno
import hashlib
import os
import py_compile
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from drivebay.protocol.errors import KernelError
from drivebay.sandbox.bundle_layout import LIB_DIR, SIGNATURE_FILE, SRC_DIR, BundleFiles
from drivebay.sandbox.manifest_schema import Manifest

if TYPE_CHECKING:
    from drivebay.sandbox.trust import SignatureCheck

BUNDLES_DIR = "bundles"
_STAGING_PREFIX = ".staging-"
_DIGEST_HEADER = b"drivebay bundle v1\0"


@dataclass(frozen=True, slots=True)
class StoredBundle:
    """An accepted bundle, as the kernel and the environment builder use it.

    ``path`` is the read-only copy ``<state>/bundles/<digest>``; ``wheels``
    maps each ``lib/`` wheel's file name to its sha256 (hex); ``source`` is
    where the bundle was dropped (it may change or vanish afterwards);
    ``signature`` how its signature was judged when it was read (None: the
    trust policy was off).
    """

    path: Path
    digest: str
    manifest: Manifest
    wheels: Mapping[str, str]
    source: Path
    signature: SignatureCheck | None = None

    @property
    def src_dir(self) -> Path:
        """The driver's code: first on the child's ``sys.path``."""
        return self.path / SRC_DIR

    @property
    def lib_dir(self) -> Path | None:
        """The bundle's wheels, or None when it ships none."""
        return self.path / LIB_DIR if self.wheels else None


def bundle_digest(files: Mapping[str, bytes]) -> str:
    """The sha256 (hex) of the canonical listing of ``files``, the signature left out."""
    digest = hashlib.sha256(_DIGEST_HEADER)
    for path in sorted(files):
        if path == SIGNATURE_FILE:
            continue
        data = files[path]
        digest.update(path.encode() + b"\0" + len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def wheel_hashes(files: Mapping[str, bytes]) -> dict[str, str]:
    """``{file name: sha256 hex}`` for each wheel in ``lib/``."""
    prefix = f"{LIB_DIR}/"
    return {
        path.removeprefix(prefix): hashlib.sha256(data).hexdigest()
        for path, data in sorted(files.items())
        if path.startswith(prefix) and path.endswith(".whl")
    }


def store_bundle(bundle: BundleFiles, state_dir: Path) -> StoredBundle:
    """Copy ``bundle`` into the store under ``state_dir`` (once) and describe it.

    Idempotent, and safe when several processes store the same bundle at
    once. Raises ``KernelError`` when the state directory cannot be written
    (full disk, permissions); the bundle itself is not at fault.
    """
    content = bundle.content
    digest = bundle_digest(content)
    store = state_dir / BUNDLES_DIR
    final = store / digest
    try:
        if not final.is_dir():
            store.mkdir(parents=True, exist_ok=True)
            _publish(content, store, final)
    except OSError as exc:
        raise KernelError(f"cannot store bundle {bundle.name} in {store}: {exc}") from exc
    return StoredBundle(
        path=final,
        digest=digest,
        manifest=bundle.manifest,
        wheels=wheel_hashes(content),
        source=bundle.source,
    )


def _publish(files: Mapping[str, bytes], store: Path, final: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=store))
    published = False
    try:
        _write_tree(files, staging)
        try:
            os.rename(staging, final)
            published = True
        except OSError as exc:
            # Another process published the same digest first: its copy has
            # the same content, so ours goes.
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                raise
    finally:
        if not published:
            _remove_tree(staging)
    _fsync_dir(store)


def remove_staging(state_dir: Path) -> None:
    """Delete staging directories left by a process that died mid-store.

    Call it only while no other process stores bundles (the kernel, at
    start-up, holding the state directory's lock).
    """
    for staging in (state_dir / BUNDLES_DIR).glob(f"{_STAGING_PREFIX}*"):
        _remove_tree(staging)


def _write_tree(files: Mapping[str, bytes], root: Path) -> None:
    """Write ``files`` under ``root``, durable and read-only, directories last."""
    dirs = {root}
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        dirs.update(target.parents[: len(target.relative_to(root).parents) - 1])
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(fd, 0o444)
            os.fsync(fd)
    dirs.update(_compile_sources(root / "src"))
    for directory in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        _fsync_dir(directory)
        directory.chmod(0o555)


def _compile_sources(src: Path) -> set[Path]:
    """Compile the driver's code once, here: children run with ``-B`` from a
    read-only copy and could never cache it. Compiling runs none of it; a
    syntax error is left for the driver's start to report. Returns the
    ``__pycache__`` directories made (read-only like the rest)."""
    if not src.is_dir():
        return set()
    compileall.compile_dir(
        src, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH
    )
    caches = set(src.rglob("__pycache__"))
    for cache in caches:
        for compiled in cache.iterdir():
            compiled.chmod(0o444)
    return caches


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(root: Path) -> None:
    """Delete a staging tree, which may already be read-only."""
    with contextlib.suppress(FileNotFoundError):
        for directory, _, _ in os.walk(root):
            os.chmod(directory, 0o700)
        shutil.rmtree(root)
