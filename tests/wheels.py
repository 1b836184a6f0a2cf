"""Tiny wheels made at test time, so environment tests need no index.

A wheel is a zip holding the package's files and a ``.dist-info`` directory
with METADATA, WHEEL and RECORD (every file's sha256 and size). Entries are
written in a fixed order with a fixed timestamp, so the same arguments always
give a byte-identical file (and the same sha256).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _escape(name: str) -> str:
    """The distribution name as wheel file names spell it (PEP 427)."""
    return re.sub(r"[-_.]+", "_", name)


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def _write_wheel(path: Path, members: Iterable[tuple[str, bytes]], dist_info: str) -> Path:
    """Write ``members`` and a RECORD for them as the wheel ``path``."""
    records = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, data in members:
            archive.writestr(zipfile.ZipInfo(arcname, _EPOCH), data)
            records.append(_record_line(arcname, data))
        records.append(f"{dist_info}/RECORD,,")
        archive.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", _EPOCH), "\n".join(records) + "\n")
    return path


def build_wheel(
    out_dir: Path,
    name: str,
    version: str,
    files: Mapping[str, str],
    *,
    requires: Sequence[str] = (),
) -> Path:
    """A pure-Python ``py3-none-any`` wheel of ``name`` ``version`` in ``out_dir``.

    ``files`` maps paths inside site-packages (``"pkg_a/__init__.py"``) to
    their text; ``requires`` become ``Requires-Dist`` lines.
    """
    dist_info = f"{_escape(name)}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {req}\n" for req in requires)
    wheel = (
        "Wheel-Version: 1.0\nGenerator: drivebay-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    members = [(arc, text.encode()) for arc, text in sorted(files.items())]
    members += [
        (f"{dist_info}/METADATA", metadata.encode()),
        (f"{dist_info}/WHEEL", wheel.encode()),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_escape(name)}-{version}-py3-none-any.whl"
    return _write_wheel(path, members, dist_info)


def wheel_of_installed(out_dir: Path, name: str) -> Path:
    """Pack a distribution installed in the running interpreter back into a wheel.

    Gives a real binary wheel (e.g. msgspec) without any index: the files
    come from the installed RECORD, the tags from the installed WHEEL file.
    Installer-written files and bytecode are left out.
    """
    dist = importlib.metadata.distribution(name)
    wheel_text = dist.read_text("WHEEL") or ""
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")
    ]
    parts = [sorted({tag.split("-")[i] for tag in tags}) for i in range(3)]
    tag = "-".join(".".join(part) for part in parts)
    version = dist.version
    dist_info = f"{_escape(dist.metadata['Name'])}-{version}.dist-info"
    skipped = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    members = []
    for file in sorted(dist.files or [], key=str):
        arcname = file.as_posix()
        if arcname.startswith("..") or "__pycache__" in arcname:
            continue
        if arcname.startswith(f"{dist_info}/") and arcname.split("/", 1)[1] in skipped:
            continue
        members.append((arcname, Path(str(file.locate())).read_bytes()))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_escape(dist.metadata['Name'])}-{version}-{tag}.whl"
    return _write_wheel(path, members, dist_info)


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, as the kernel computes it for ``lib/``."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
