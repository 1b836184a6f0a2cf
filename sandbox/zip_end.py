"""The number of entries a zip declares, read from its end record alone.

``zipfile`` parses the whole central directory when it opens a zip: a
million entries cost seconds and hundreds of MB before the reader could
count them. The end record (and, for a zip64, its zip64 end record) says how
many entries follow, so a zip over the limit is refused before that.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

# signature, disk, central-directory disk, entries on this disk, entries in
# total, central-directory size and offset, comment length
_END = struct.Struct("<4s4H2LH")
_END_SIGNATURE = b"PK\x05\x06"
# signature, disk, offset of the zip64 end record, number of disks
_LOCATOR = struct.Struct("<4sLQL")
_LOCATOR_SIGNATURE = b"PK\x06\x07"
# signature, record size, versions made by and needed, disk, central-directory
# disk, entries on this disk, entries in total, central-directory size and offset
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_SIGNATURE = b"PK\x06\x06"
_MAX_COMMENT = 0xFFFF


def declared_entries(path: Path) -> int | None:
    """The entry count ``path``'s end record declares; None when it has none
    that can be read (``zipfile`` then says what is wrong)."""
    with open(path, "rb") as stream:
        size = stream.seek(0, os.SEEK_END)
        start = max(0, size - _END.size - _MAX_COMMENT)
        stream.seek(start)
        tail = stream.read()
        at = tail.rfind(_END_SIGNATURE)
        if at < 0 or at + _END.size > len(tail):
            return None
        total: int = _END.unpack_from(tail, at)[4]
        if total != 0xFFFF or at < _LOCATOR.size:
            return total
        signature, _, offset, _ = _LOCATOR.unpack_from(tail, at - _LOCATOR.size)
        if signature != _LOCATOR_SIGNATURE:
            return total
        stream.seek(offset)
        record = stream.read(_END64.size)
    if len(record) < _END64.size or not record.startswith(_END64_SIGNATURE):
        return None
    entries: int = _END64.unpack(record)[7]
    return entries
