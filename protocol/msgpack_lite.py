"""MessagePack in pure Python: the driver child's codec when msgspec is absent.

A driver's virtualenv need not have msgspec, so the child falls back to this
module (see ``child_codec``). It writes the very bytes ``msgspec.msgpack.encode``
writes for the same value, and reads everything msgspec writes, so the kernel
cannot tell which codec a child uses. Standard library only.

Encoding follows msgspec's default ``Encoder`` exactly: the smallest integer
form (non-negative ints always unsigned: fixint, uint8..uint64; negative ones
fixint, int8..int64), floats always as float64 with their bits kept (NaN
payloads too), str as fixstr/str8/str16/str32, bytes-likes as bin8/16/32,
list/tuple/set/frozenset (and their subclasses) as arrays, dict (and its
subclasses) as maps. The standard library's other value types are written as
msgspec writes them: an aware ``datetime`` as the MessagePack timestamp
(ext type -1, the 32-, 64- or 96-bit form), a naive one, a ``date``, a
``time`` and a ``timedelta`` as ISO 8601 text, a ``uuid.UUID`` and a
``decimal.Decimal`` as text, an ``Enum`` member as its value, a dataclass
(or an attrs instance) as a map of its set fields. ``docs/protocol.md`` lists each encoding.

Decoding gives None, bool, int, float, str, bytes, list, dict and, for a
timestamp, an aware ``datetime`` in UTC (rounded to the microsecond), as
msgspec does. A map key that is an array becomes a tuple (nested arrays too),
as msgspec does; a map key that is a map cannot be hashed and is an error.
Other ext types are refused. Containers may nest at most ``MAX_DEPTH`` deep,
both ways.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Callable
from enum import EnumMeta
from types import MemberDescriptorType
from typing import Any

__all__ = ["MAX_DEPTH", "MsgpackError", "packb", "unpackb"]

MAX_DEPTH = 256
"""How many containers may enclose one another; deeper input is refused."""


class MsgpackError(ValueError):
    """A value cannot be encoded, or bytes are not one MessagePack value we read.

    ``packb`` raises it for a type it does not know (the message names it), an
    int out of range, a str that is not valid Unicode, a datetime that is out
    of range in UTC or nesting past ``MAX_DEPTH`` (a cycle, say). ``unpackb``
    raises it for truncated input, trailing bytes, invalid UTF-8, ext types
    other than a valid timestamp, unhashable map keys and nesting past
    ``MAX_DEPTH``. Either way the peer sent or was given a bad message:
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
_TIMESTAMP_32 = struct.Struct(">BbI")  # fixext 4, type -1, seconds
_TIMESTAMP_64 = struct.Struct(">BbQ")  # fixext 8, type -1, nanoseconds << 34 | seconds
_TIMESTAMP_96 = struct.Struct(">BBbIq")  # ext 8, 12 bytes, type -1, nanoseconds, seconds
_UNIX_EPOCH_DAY = 719163  # date(1970, 1, 1).toordinal()


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


def _pack_map(obj: dict[Any, Any], append: _Append, depth: int, declared: int = -1) -> None:
    """``declared``: the size class of the header, when it is not the count's
    (msgspec sizes an object's header for all the fields it declares)."""
    n = len(obj)
    size = n if declared < 0 else declared
    if size < 0x10:
        append(_BYTE[0x80 | n])
    elif size <= 0xFFFF:
        append(_B_U16.pack(0xDE, n))
    else:
        _pack_long_header(append, n, 0xDF, "map")
    if depth >= MAX_DEPTH:
        raise MsgpackError(f"containers nested more than {MAX_DEPTH} deep (a cycle?)")
    depth += 1
    get = _PACKERS.get
    for key, value in obj.items():
        get(type(key), _pack_key)(key, append, depth)
        get(type(value), _pack_other)(value, append, depth)


def _pack_long_header(append: _Append, n: int, c32: int, kind: str) -> None:
    if n > 0xFFFF_FFFF:
        raise MsgpackError(f"{kind} too long to encode: {n} items")
    append(_B_U32.pack(c32, n))


def _pack_key(obj: object, append: _Append, depth: int) -> None:
    """A map key: msgspec also takes str subclasses there (not as values)."""
    if isinstance(obj, str):
        _pack_str(obj, append, depth)
    else:
        _pack_other(obj, append, depth)


def _pack_other(obj: object, append: _Append, depth: int) -> None:
    """Every type but the exact builtins, tested in msgspec's order; else fail.

    A type of ``datetime``, ``uuid`` or ``decimal`` is only looked for when its
    module is loaded (the value could not exist otherwise), so that this
    module imports none of them.
    """
    if isinstance(obj, dict):
        _pack_map(obj, append, depth)
    elif isinstance(obj, list | tuple):
        _pack_array(obj, append, depth)
    elif (packer := _stdlib_packer(type(obj))) is not None:
        packer(obj, append, depth)
    elif isinstance(type(obj), EnumMeta):
        _pack_enum(obj, append, depth)
    elif _is_decimal(obj):
        _pack_str(str(obj), append, depth)
    elif (uuid := sys.modules.get("uuid")) is not None and isinstance(obj, uuid.UUID):
        _pack_str(uuid.UUID.__str__(obj), append, depth)
    elif isinstance(obj, set | frozenset):
        _pack_array(obj, append, depth)  # type: ignore[arg-type]  # sets only need len/iter
    elif not isinstance(obj, type) and (fields := _dataclass_fields(obj)) is not None:
        _pack_dataclass(obj, fields, append, depth)
    elif not isinstance(obj, type) and "__attrs_attrs__" in type(obj).__dict__:
        items, declared = _object_values(obj)
        _pack_map(dict(items), append, depth, declared)
    else:
        cls = type(obj)
        raise MsgpackError(f"cannot encode objects of type {cls.__module__}.{cls.__qualname__}")


def _stdlib_packer(cls: type) -> _Packer | None:
    """The packer of ``datetime``'s four value types (exact types, as msgspec)."""
    module = sys.modules.get("datetime")
    if module is None or cls.__module__ != "datetime":
        return None
    if cls is module.datetime:
        return _pack_datetime
    if cls is module.date:
        return _pack_isoformat
    if cls is module.time:
        return _pack_time
    if cls is module.timedelta:
        return _pack_timedelta
    return None


def _is_decimal(obj: object) -> bool:
    decimal = sys.modules.get("decimal")
    return decimal is not None and type(obj) is decimal.Decimal


def _pack_enum(obj: Any, append: _Append, depth: int) -> None:
    """An int or str enum as its int or str; any other as its value."""
    if isinstance(obj, int):
        _pack_int(obj, append, depth)
    elif isinstance(obj, str):
        _pack_str(obj, append, depth)
    else:
        value = obj._value_
        _PACKERS.get(type(value), _pack_other)(value, append, depth)


def _pack_isoformat(obj: Any, append: _Append, depth: int) -> None:
    """A ``date`` (or a naive ``datetime``): ``YYYY-MM-DD[THH:MM:SS[.ffffff]]``."""
    _pack_str(obj.isoformat(), append, depth)


def _pack_datetime(obj: Any, append: _Append, depth: int) -> None:
    """Naive: ISO 8601 text. Aware: the MessagePack timestamp of its instant."""
    if obj.tzinfo is None:
        _pack_isoformat(obj, append, depth)
        return
    from datetime import UTC  # not at the top: drivebayctl and most children never need it

    if obj.tzinfo is not UTC:
        try:
            obj = obj.astimezone(UTC)
        except OverflowError as exc:
            raise MsgpackError(f"datetime {obj!r} is out of range in UTC: {exc}") from exc
    days = obj.toordinal() - _UNIX_EPOCH_DAY
    seconds = days * 86400 + obj.hour * 3600 + obj.minute * 60 + obj.second
    nanoseconds = obj.microsecond * 1000
    if seconds >> 34 == 0:
        data64 = nanoseconds << 34 | seconds
        if data64 >> 32 == 0:
            append(_TIMESTAMP_32.pack(0xD6, -1, data64))
        else:
            append(_TIMESTAMP_64.pack(0xD7, -1, data64))
    else:
        append(_TIMESTAMP_96.pack(0xC7, 12, -1, nanoseconds, seconds))


def _pack_time(obj: Any, append: _Append, depth: int) -> None:
    """``HH:MM:SS[.ffffff]``, then ``Z`` or ``±HH:MM`` when aware."""
    text = obj.replace(tzinfo=None).isoformat()
    tzinfo = obj.tzinfo
    if tzinfo is not None:
        from datetime import UTC, timedelta

        offset = timedelta(0) if tzinfo is UTC else tzinfo.utcoffset(None)
        if offset is not None:
            if type(offset) is not timedelta:
                raise MsgpackError("tzinfo.utcoffset returned a non-timedelta object")
            text += _utc_offset(offset.days, offset.seconds)
    _pack_str(text, append, depth)


def _utc_offset(days: int, seconds: int) -> str:
    """msgspec's (RFC 3339) offset: seconds rounded to the nearest minute, 23:59 at most."""
    if seconds == 0:
        return "Z"
    sign = "+"
    if days == -1:
        sign = "-"
        seconds = 86400 - seconds
    hours, minutes = seconds // 3600, seconds // 60 % 60
    if seconds - (hours * 3600 + minutes * 60) > 30 and (hours, minutes) != (23, 59):
        minutes += 1
        if minutes == 60:
            minutes = 0
            hours += 1
    if hours == 0 and minutes == 0:
        return "Z"
    return f"{sign}{hours:02d}:{minutes:02d}"


def _pack_timedelta(obj: Any, append: _Append, depth: int) -> None:
    """ISO 8601 duration: ``[-]P[nD][TsS]``, seconds with their fraction, ``P0D`` for 0."""
    days, seconds, micros = obj.days, obj.seconds, obj.microseconds
    text = ""
    if days < 0:
        text = "-"
        days = -days
        if seconds or micros:
            days -= 1
            if micros:
                micros = 1_000_000 - micros
                seconds += 1
            seconds = 86400 - seconds
    text += "P"
    if days:
        text += f"{days}D"
    if seconds or micros:
        text += f"T{seconds}"
        if micros:
            text += f".{micros:06d}".rstrip("0")
        text += "S"
    elif not days:
        text += "0D"
    _pack_str(text, append, depth)


def _dataclass_fields(obj: object) -> Any:
    try:
        return obj.__dataclass_fields__  # type: ignore[attr-defined]
    except Exception:  # msgspec clears any error here too
        return None


def _pack_dataclass(obj: object, fields: Any, append: _Append, depth: int) -> None:
    """A map of the fields that are set, in declaration order, as msgspec writes it:
    the header's width is chosen for every field declared (ClassVar and InitVar
    pseudo-fields included), its count is of those written."""
    if type(fields) is not dict:
        raise MsgpackError(f"{obj!r}.__dataclass_fields__ is not a dict")
    _pack_map(dict(_dataclass_values(obj, fields)), append, depth, len(fields))


def _dataclass_values(obj: object, fields: dict[Any, Any]) -> list[tuple[str, Any]]:
    """(name, value) of each field the instance has: from its ``__dict__``, else
    from a data descriptor (a slot, a property with a setter) of its class."""
    cls = type(obj)
    plain = cls.__getattribute__ is object.__getattribute__ and not hasattr(cls, "__getattr__")
    instance = getattr(obj, "__dict__", None) if plain else None
    items = []
    for name in fields:
        if type(name) is not str:
            continue
        if instance is not None and name in instance:
            items.append((name, instance[name]))
            continue
        value = _read_field(obj, cls, name, plain)
        if value is not _MISSING:
            items.append((name, value))
    return items


_MISSING = object()


def _read_field(obj: object, cls: type, name: str, plain: bool) -> Any:
    """A field not in the instance's ``__dict__``, or ``_MISSING``; msgspec skips
    a field it cannot read (an unset slot, a getter that raises)."""
    try:
        if not plain:
            return getattr(obj, name)
        descriptor = _class_attribute(cls, name)
        kind = type(descriptor)
        if hasattr(kind, "__get__") and (hasattr(kind, "__set__") or hasattr(kind, "__delete__")):
            return kind.__get__(descriptor, obj, cls)
    except Exception:
        pass
    return _MISSING


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement


def _object_values(obj: object) -> tuple[list[tuple[str, Any]], int]:
    """An attrs instance as msgspec reads any object: the public entries of its
    ``__dict__``, then its set public slots, class by class up the base chain;
    and how many there could have been (for the header's size class)."""
    instance = getattr(obj, "__dict__", None)
    declared = 0
    items = []
    if type(instance) is dict:
        declared = len(instance)
        items = [
            (name, value)
            for name, value in instance.items()
            if type(name) is str and not name.startswith("_")
        ]
    klass: type | None = type(obj)
    while klass is not None:
        slots = [  # a heap type's members are its __slots__ (sorted); others count none
            (name, member)
            for name, member in vars(klass).items()
            if type(member) is MemberDescriptorType and klass.__flags__ & _HEAP_TYPE
        ]
        declared += len(slots)
        for name, member in slots:
            if name.startswith("_"):
                continue
            with contextlib.suppress(AttributeError):  # an unset slot is left out
                items.append((name, member.__get__(obj, klass)))
        klass = klass.__base__
    return items, declared


def _class_attribute(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


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

_STR, _BIN, _ARRAY, _MAP, _CONST, _SCALAR, _EXT = range(7)
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")
_U64, _I64 = struct.Struct(">Q"), struct.Struct(">q")
# Type byte -> (kind, the constant or the layout of the value or of its length;
# for an ext, its length: an int for fixext), for every code outside the fix
# ranges; the one code missing is 0xc1 (never used).
_CODES: dict[int, tuple[int, Any]] = {
    0xC0: (_CONST, None),
    0xC2: (_CONST, False),
    0xC3: (_CONST, True),
    0xC4: (_BIN, _U8),
    0xC5: (_BIN, _U16),
    0xC6: (_BIN, _U32),
    0xC7: (_EXT, _U8),
    0xC8: (_EXT, _U16),
    0xC9: (_EXT, _U32),
    0xCA: (_SCALAR, struct.Struct(">f")),
    0xCB: (_SCALAR, struct.Struct(">d")),
    0xCC: (_SCALAR, _U8),
    0xCD: (_SCALAR, _U16),
    0xCE: (_SCALAR, _U32),
    0xCF: (_SCALAR, struct.Struct(">Q")),
    0xD0: (_SCALAR, struct.Struct(">b")),
    0xD1: (_SCALAR, struct.Struct(">h")),
    0xD2: (_SCALAR, struct.Struct(">i")),
    0xD3: (_SCALAR, _I64),
    0xD4: (_EXT, 1),
    0xD5: (_EXT, 2),
    0xD6: (_EXT, 4),
    0xD7: (_EXT, 8),
    0xD8: (_EXT, 16),
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
        if kind == _EXT:
            return _unpack_ext(data, pos, code, layout)
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


def _unpack_ext(data: bytes, pos: int, code: int, layout: Any) -> tuple[Any, int]:
    """The ext at ``pos`` (just after its type byte): only a timestamp is read."""
    start = pos - 1
    if type(layout) is int:
        n = layout
    else:
        n = layout.unpack_from(data, pos)[0]
        pos += layout.size
    end = pos + 1 + n
    if end > len(data):
        raise _too_short(data, pos, n + 1, "ext", "bytes")
    if data[pos] != 0xFF:  # ext type -1
        ext_type = data[pos] - 0x100 if data[pos] >= 0x80 else data[pos]
        raise MsgpackError(
            f"unsupported type code 0x{code:02x} at byte {start}: ext type {ext_type} "
            "(only timestamps, ext type -1, are read)"
        )
    return _timestamp(data[pos + 1 : end], start), end


_EPOCH_SECONDS_MIN = -62135596800  # 0001-01-01T00:00:00Z
_EPOCH_SECONDS_END = 253402300800  # 10000-01-01T00:00:00Z, excluded


def _timestamp(payload: bytes, start: int) -> Any:
    """The MessagePack timestamp as msgspec reads it: an aware UTC datetime,
    the nanoseconds rounded to the nearest microsecond."""
    n = len(payload)
    if n == 4:
        seconds, nanoseconds = _U32.unpack(payload)[0], 0
    elif n == 8:
        data64 = _U64.unpack(payload)[0]
        seconds, nanoseconds = data64 & 0x3_FFFF_FFFF, data64 >> 34
    elif n == 12:
        nanoseconds, seconds = _U32.unpack_from(payload)[0], _I64.unpack_from(payload, 4)[0]
    else:
        raise MsgpackError(f"timestamp at byte {start} has {n} bytes (4, 8 or 12 expected)")
    if nanoseconds > 999_999_999:
        raise MsgpackError(f"timestamp at byte {start}: nanoseconds out of range")
    # msgspec checks the lower bound before rounding, the upper one after.
    micros = (nanoseconds + 500) // 1000
    if micros == 1_000_000 and seconds >= _EPOCH_SECONDS_MIN:
        micros = 0
        seconds += 1
    if not _EPOCH_SECONDS_MIN <= seconds < _EPOCH_SECONDS_END:
        raise MsgpackError(f"timestamp at byte {start} is out of range for a datetime")
    from datetime import UTC, datetime, timedelta

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + timedelta(seconds=seconds, microseconds=micros)


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
