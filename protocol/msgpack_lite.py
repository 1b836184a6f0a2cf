"""MessagePack in pure Python: the driver child's codec when msgspec is absent.

A driver's virtualenv need not have msgspec, so the child falls back to this
module (see ``child_codec``). It writes the very bytes ``msgspec.msgpack.encode``
writes for the same value, and reads everything msgspec writes, so the kernel
cannot tell which codec a child uses. Standard library only.

Encoding follows msgspec exactly: the smallest integer form (non-negative ints
always unsigned: fixint, uint8..uint64; negative ones fixint, int8..int64),
floats always as float64 with their bits kept (NaN payloads too), str as
fixstr/str8/str16/str32, bytes-likes as bin8/16/32. Values: None, bool, int in
[-2**63, 2**64 - 1], float, str, bytes/bytearray/memoryview, list/tuple/set/
frozenset (array), dict (map); subclasses of dict/list/tuple/set/frozenset and
Enum members (encoded as their value) are accepted like msgspec accepts them.

Decoding gives None, bool, int, float, str, bytes, list and dict. A map key
that is an array becomes a tuple (nested arrays too), as msgspec does; a map
key that is a map cannot be hashed and is an error. Ext types are refused.
Containers may nest at most ``MAX_DEPTH`` deep, both ways.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum
from typing import Any

__all__ = ["MAX_DEPTH", "MsgpackError", "packb", "unpackb"]

MAX_DEPTH = 256
"""How many containers may enclose one another; deeper input is refused."""


class MsgpackError(ValueError):
    """A value cannot be encoded, or bytes are not one MessagePack value we read.

    ``packb`` raises it for a type it does not know (the message names it), an
    int out of range, a str that is not valid Unicode or nesting past
    ``MAX_DEPTH`` (a cycle, say). ``unpackb`` raises it for truncated input,
    trailing bytes, invalid UTF-8, ext types, unhashable map keys and nesting
    past ``MAX_DEPTH``. Either way the peer sent or was given a bad message:
    report it; retrying the same bytes cannot succeed.
    """


# Encoders append chunks to a list that is joined once at the end: cheaper here
# than growing a bytearray.
_Append = Callable[[bytes | bytearray], None]
_Packer = Callable[[Any, _Append, int], None]
_BYTE = [bytes((i,)) for i in range(256)]

_B_U8 = struct.Struct(">BB")
_B_U16 = struct.Struct(">BH")
_B_U32 = struct.Struct(">BI")
_B_U64 = struct.Struct(">BQ")
_B_I8 = struct.Struct(">Bb")
_B_I16 = struct.Struct(">Bh")
_B_I32 = struct.Struct(">Bi")
_B_I64 = struct.Struct(">Bq")
_B_F64 = struct.Struct(">Bd")


def packb(obj: object) -> bytes:
    """Encode ``obj`` as msgspec would; raises ``MsgpackError`` if it cannot."""
    chunks: list[bytes | bytearray] = []
    try:
        _PACKERS.get(type(obj), _pack_other)(obj, chunks.append, 0)
    except RecursionError as exc:  # the caller's own stack was already deep
        raise MsgpackError("value nested too deeply to encode") from exc
    return b"".join(chunks)


def _pack_none(obj: None, append: _Append, depth: int) -> None:
    append(b"\xc0")


def _pack_bool(obj: bool, append: _Append, depth: int) -> None:
    append(b"\xc3" if obj else b"\xc2")


def _pack_int(obj: int, append: _Append, depth: int) -> None:
    if obj >= 0:
        if obj < 0x80:
            append(_BYTE[obj])
        elif obj <= 0xFF:
            append(_B_U8.pack(0xCC, obj))
        elif obj <= 0xFFFF:
            append(_B_U16.pack(0xCD, obj))
        elif obj <= 0xFFFF_FFFF:
            append(_B_U32.pack(0xCE, obj))
        elif obj <= 0xFFFF_FFFF_FFFF_FFFF:
            append(_B_U64.pack(0xCF, obj))
        else:
            raise MsgpackError(f"int too large to encode: {obj} > 2**64 - 1")
    elif obj >= -0x20:
        append(_BYTE[obj & 0xFF])
    elif obj >= -0x80:
        append(_B_I8.pack(0xD0, obj))
    elif obj >= -0x8000:
        append(_B_I16.pack(0xD1, obj))
    elif obj >= -0x8000_0000:
        append(_B_I32.pack(0xD2, obj))
    elif obj >= -0x8000_0000_0000_0000:
        append(_B_I64.pack(0xD3, obj))
    else:
        raise MsgpackError(f"int too small to encode: {obj} < -2**63")


def _pack_float(obj: float, append: _Append, depth: int) -> None:
    append(_B_F64.pack(0xCB, obj))


def _pack_str(obj: str, append: _Append, depth: int) -> None:
    try:
        data = obj.encode()
    except UnicodeEncodeError as exc:
        raise MsgpackError(f"str is not valid Unicode: {exc}") from exc
    n = len(data)
    if n < 0x20:
        append(_BYTE[0xA0 | n])
    else:
        _pack_header(append, n, 0xD9, 0xDA, 0xDB, "str")
    append(data)


def _pack_bin(obj: bytes | bytearray | memoryview, append: _Append, depth: int) -> None:
    if type(obj) is memoryview:
        obj = obj.tobytes()  # its len() counts items, not bytes
    _pack_header(append, len(obj), 0xC4, 0xC5, 0xC6, "bin")
    append(obj)


def _pack_header(append: _Append, n: int, c8: int, c16: int, c32: int, kind: str) -> None:
    if n <= 0xFF:
        append(_B_U8.pack(c8, n))
    elif n <= 0xFFFF:
        append(_B_U16.pack(c16, n))
    elif n <= 0xFFFF_FFFF:
        append(_B_U32.pack(c32, n))
    else:
        raise MsgpackError(f"{kind} too long to encode: {n} bytes")


def _pack_array(obj: list[Any] | tuple[Any, ...], append: _Append, depth: int) -> None:
    n = len(obj)
    if n < 0x10:
        append(_BYTE[0x90 | n])
    elif n <= 0xFFFF:
        append(_B_U16.pack(0xDC, n))
    else:
        _pack_long_header(append, n, 0xDD, "array")
    if depth >= MAX_DEPTH:
        raise MsgpackError(f"containers nested more than {MAX_DEPTH} deep (a cycle?)")
    depth += 1
    get = _PACKERS.get
    for item in obj:
        get(type(item), _pack_other)(item, append, depth)


def _pack_map(obj: dict[Any, Any], append: _Append, depth: int) -> None:
    n = len(obj)
    if n < 0x10:
        append(_BYTE[0x80 | n])
    elif n <= 0xFFFF:
        append(_B_U16.pack(0xDE, n))
    else:
        _pack_long_header(append, n, 0xDF, "map")
    if depth >= MAX_DEPTH:
        raise MsgpackError(f"containers nested more than {MAX_DEPTH} deep (a cycle?)")
    depth += 1
    get = _PACKERS.get
    for key, value in obj.items():
        get(type(key), _pack_other)(key, append, depth)
        get(type(value), _pack_other)(value, append, depth)


def _pack_long_header(append: _Append, n: int, c32: int, kind: str) -> None:
    if n > 0xFFFF_FFFF:
        raise MsgpackError(f"{kind} too long to encode: {n} items")
    append(_B_U32.pack(c32, n))


def _pack_other(obj: object, append: _Append, depth: int) -> None:
    """Subclasses and enums, which msgspec also accepts; anything else fails."""
    if isinstance(obj, Enum):
        _PACKERS.get(type(obj.value), _pack_other)(obj.value, append, depth)
    elif isinstance(obj, dict):
        _pack_map(obj, append, depth)
    elif isinstance(obj, list | tuple | set | frozenset):
        _pack_array(obj, append, depth)  # type: ignore[arg-type]  # sets only need len/iter
    else:
        cls = type(obj)
        raise MsgpackError(f"cannot encode objects of type {cls.__module__}.{cls.__qualname__}")


_PACKERS: dict[type, _Packer] = {
    type(None): _pack_none,
    bool: _pack_bool,
    int: _pack_int,
    float: _pack_float,
    str: _pack_str,
    bytes: _pack_bin,
    bytearray: _pack_bin,
    memoryview: _pack_bin,
    list: _pack_array,
    tuple: _pack_array,
    set: _pack_array,
    frozenset: _pack_array,
    dict: _pack_map,
}

# -- decoding ------------------------------------------------------------------

_STR, _BIN, _ARRAY, _MAP, _CONST, _SCALAR = range(6)
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")
# Type byte -> (kind, the constant or the layout of the value or of its length),
# for every code outside the fix ranges; the codes missing are ext types and 0xc1.
_CODES: dict[int, tuple[int, Any]] = {
    0xC0: (_CONST, None),
    0xC2: (_CONST, False),
    0xC3: (_CONST, True),
    0xC4: (_BIN, _U8),
    0xC5: (_BIN, _U16),
    0xC6: (_BIN, _U32),
    0xCA: (_SCALAR, struct.Struct(">f")),
    0xCB: (_SCALAR, struct.Struct(">d")),
    0xCC: (_SCALAR, _U8),
    0xCD: (_SCALAR, _U16),
    0xCE: (_SCALAR, _U32),
    0xCF: (_SCALAR, struct.Struct(">Q")),
    0xD0: (_SCALAR, struct.Struct(">b")),
    0xD1: (_SCALAR, struct.Struct(">h")),
    0xD2: (_SCALAR, struct.Struct(">i")),
    0xD3: (_SCALAR, struct.Struct(">q")),
    0xD9: (_STR, _U8),
    0xDA: (_STR, _U16),
    0xDB: (_STR, _U32),
    0xDC: (_ARRAY, _U16),
    0xDD: (_ARRAY, _U32),
    0xDE: (_MAP, _U16),
    0xDF: (_MAP, _U32),
}


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Decode exactly one value from ``data``; raises ``MsgpackError`` if it is not one."""
    if type(data) is not bytes:
        data = bytes(data)  # one copy, so that slices below are bytes
    try:
        obj, pos = _unpack(data, 0, 0)
    except (IndexError, struct.error) as exc:
        raise MsgpackError(f"truncated input ({len(data)} bytes)") from exc
    except UnicodeDecodeError as exc:
        raise MsgpackError(f"str is not valid UTF-8: {exc}") from exc
    except RecursionError as exc:  # the caller's own stack was already deep
        raise MsgpackError("input nested too deeply to decode") from exc
    if pos != len(data):
        raise MsgpackError(f"{len(data) - pos} trailing bytes after the value at byte {pos}")
    return obj


def _unpack(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """Decode the value at ``pos``; return it and the position after it.

    Containers are built here rather than in helpers so that each level of
    nesting costs one stack frame. A fixed-size read past the end surfaces as
    IndexError or struct.error, which ``unpackb`` turns into MsgpackError.
    """
    code = data[pos]
    pos += 1
    if code <= 0x7F:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if code >= 0xA0:
        if code <= 0xBF:
            end = pos + (code & 0x1F)
            if end > len(data):
                raise _too_short(data, pos, code & 0x1F, "str", "bytes")
            return data[pos:end].decode(), end
        entry = _CODES.get(code)
        if entry is None:
            raise MsgpackError(f"unsupported type code 0x{code:02x} at byte {pos - 1}")
        kind, layout = entry
        if kind == _SCALAR:
            return layout.unpack_from(data, pos)[0], pos + layout.size
        if kind == _CONST:
            return layout, pos
        n = layout.unpack_from(data, pos)[0]
        pos += layout.size
        if kind <= _BIN:  # str or bin
            end = pos + n
            if end > len(data):
                raise _too_short(data, pos, n, "str" if kind == _STR else "bin", "bytes")
            chunk = data[pos:end]
            return (chunk.decode() if kind == _STR else chunk), end
        is_map = kind == _MAP
    else:
        n = code & 0x0F
        is_map = code < 0x90
    if depth >= MAX_DEPTH:
        raise MsgpackError(f"containers nested more than {MAX_DEPTH} deep")
    depth += 1
    # Every item takes at least one byte: refuse a count the input cannot hold
    # before reading on.
    if n << is_map > len(data) - pos:
        raise _too_short(data, pos, n, "map" if is_map else "array", "items")
    # while loops: cheaper than range() for the few items most containers hold
    if not is_map:
        items: list[Any] = []
        append = items.append
        while n:
            item, pos = _unpack(data, pos, depth)
            append(item)
            n -= 1
        return items, pos
    result: dict[Any, Any] = {}
    while n:
        key, pos = _unpack(data, pos, depth)
        if type(key) is not str:
            key = _map_key(key, pos)
        result[key], pos = _unpack(data, pos, depth)
        n -= 1
    return result, pos


def _too_short(data: bytes, pos: int, n: int, kind: str, unit: str) -> MsgpackError:
    return MsgpackError(
        f"truncated input: {kind} at byte {pos} declares {n} {unit}, {len(data) - pos} bytes remain"
    )


def _map_key(key: Any, pos: int) -> Any:
    """A decoded map key made hashable as msgspec does: arrays become tuples."""
    if type(key) is list:
        key = _as_tuple(key)
    try:
        hash(key)
    except TypeError as exc:
        raise MsgpackError(f"map key before byte {pos} is or holds a map: unhashable") from exc
    return key


def _as_tuple(items: list[Any]) -> tuple[Any, ...]:
    return tuple(_as_tuple(item) if type(item) is list else item for item in items)
