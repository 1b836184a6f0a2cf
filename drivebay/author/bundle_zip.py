"""A bundle's files as a reproducible zip: the same files give the same bytes.

Nothing of the machine or the moment goes in: entries in sorted path order,
each parent directory as its own entry before its contents, one timestamp
for all (``SOURCE_DATE_EPOCH`` when set, else 1980-01-01 00:00, the zip
format's first), modes 0644 for files and 0755 for directories whatever the
source had, Unix as the creating system, no comment, no extra fields. Text
is deflated at level 9; already compressed files (wheels, archives) are
stored. Deflate's bytes are zlib's: the same zlib gives the same zip.
"""

from __future__ import annotations

import os
import stat
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

EPOCH_1980: Final = (1980, 1, 1, 0, 0, 0)
STORED_SUFFIXES: Final = (".whl", ".zip", ".gz", ".tgz", ".xz", ".bz2", ".zst", ".png", ".jpg")
_UNIX: Final = 3
_MSDOS_DIRECTORY: Final = 0x10


def zip_timestamp() -> tuple[int, int, int, int, int, int]:
    """The one timestamp of every entry: ``SOURCE_DATE_EPOCH`` (UTC, at least
    1980, the zip format's first year, and even seconds, its resolution),
    else 1980-01-01 00:00."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch.isdigit():
        return EPOCH_1980
    moment = time.gmtime(int(epoch))
    if moment.tm_year < 1980:
        return EPOCH_1980
    year, month, day, hour, minute, second = moment[:6]
    return (min(year, 2107), month, day, hour, minute, second - second % 2)


def directories(paths: list[str]) -> list[str]:
    """Every parent directory of ``paths`` (``src``, ``src/pkg``), once."""
    found: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        found.update("/".join(parts[: depth + 1]) for depth in range(len(parts)))
    return sorted(found)


def write_zip(target: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (``/``-separated relative path -> bytes) as ``target``."""
    when = zip_timestamp()
    entries: list[tuple[str, bytes | None]] = [(f"{d}/", None) for d in directories(list(files))]
    entries += [(path, files[path]) for path in files]
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in sorted(entries, key=lambda entry: entry[0].encode()):
            info = zipfile.ZipInfo(name, when)
            info.create_system = _UNIX
            if data is None:
                info.external_attr = (stat.S_IFDIR | 0o755) << 16 | _MSDOS_DIRECTORY
                archive.writestr(info, b"")
                continue
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            if name.lower().endswith(STORED_SUFFIXES):
                info.compress_type = zipfile.ZIP_STORED
                archive.writestr(info, data)
            else:
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data, compresslevel=9)
