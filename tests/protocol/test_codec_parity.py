"""A driver's result means the same whichever codec its child runs.

The child encodes with msgspec when its environment has it and with
``msgpack_lite`` otherwise (``child_codec``). Over every value type a driver
may return (the standard library's too: datetimes, UUIDs, decimals, enums,
sets, dataclasses, attrs instances), both codecs either write the same bytes or both refuse
the value; the kernel reads those bytes into the same ``Result``; and each
codec reads back what the other wrote, as the same values.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import struct
import typing
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivebay.protocol.child_codec import ChildCodec
from drivebay.protocol.codec import MessageCodec
from drivebay.protocol.messages import Result, ToKernel
from drivebay.protocol.msgpack_lite import MsgpackError, packb, unpackb
from tests.protocol.test_msgpack_lite import ints
from tests.protocol.test_msgpack_lite import scalars as builtin_scalars

fuzz = settings(deadline=None, database=None, max_examples=300)


class Colour(enum.Enum):
    RED = 1
    NAME = "blue"
    PAIR = (1, 2)
    NOTHING = None
    RATIO = 0.5


class Level(enum.IntEnum):
    LOW = -3
    HIGH = 300


class Mode(enum.StrEnum):
    FAST = "fast"


class Perm(enum.IntFlag):
    R = 4
    W = 2


@dataclasses.dataclass
class Point:
    x: Any
    y: Any = None
    _hidden: Any = 0
    limit: typing.ClassVar[int] = 3
    seed: dataclasses.InitVar[int] = 0
    tag: str = dataclasses.field(default="t", init=False)  # a class attribute: not sent


@dataclasses.dataclass(slots=True)
class Slotted:
    b: Any
    a: Any = 1


@dataclasses.dataclass(frozen=True)
class Frozen:
    value: Any


class Record:
    """What msgspec takes for an attrs class: ``__attrs_attrs__`` in its own dict."""

    __attrs_attrs__ = ()

    def __init__(self, name: Any, value: Any) -> None:
        self.name = name
        self._private = value  # left out
        self.value = value


class SlottedRecord:
    __attrs_attrs__ = ()
    __slots__ = ("b", "a", "_private", "unset")  # noqa: RUF023 -- Python sorts them

    def __init__(self, b: Any, a: Any) -> None:
        self.b, self.a, self._private = b, a, 0


class Wider(SlottedRecord):
    __attrs_attrs__ = ()
    __slots__ = ("c",)

    def __init__(self, b: Any, a: Any) -> None:
        super().__init__(b, a)
        self.c = 3


def offsets() -> st.SearchStrategy[dt.tzinfo]:
    """UTC, whole minutes, and seconds that msgspec rounds to a minute."""
    span = dt.timedelta(hours=23, minutes=59, seconds=59)
    return st.just(dt.UTC) | st.timedeltas(-span, span).map(dt.timezone)


hashable_stdlib: st.SearchStrategy[Any] = (
    st.datetimes(timezones=st.none() | offsets())
    | st.datetimes(
        min_value=dt.datetime(1960, 1, 1), max_value=dt.datetime(2600, 1, 1), timezones=offsets()
    )  # the three timestamp forms
    | st.dates()
    | st.times(timezones=st.none() | offsets())
    | st.timedeltas()
    | st.uuids()
    | st.decimals(allow_nan=False)
    | st.sampled_from([*Colour, *Level, *Mode, Perm.R | Perm.W])
)
stdlib_scalars = hashable_stdlib | st.decimals(allow_nan=True)  # sNaN cannot be hashed
hashable = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | st.text() | st.binary() | hashable_stdlib,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    builtin_scalars | stdlib_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.sets(hashable, max_size=4)
        | st.frozensets(hashable, max_size=4)
        | st.dictionaries(hashable, inner, max_size=5)
        | st.builds(Point, inner, inner, inner)
        | st.builds(Slotted, inner, inner)
        | st.builds(Frozen, inner)
        | st.builds(Record, inner, inner)
        | st.builds(SlottedRecord, inner, inner)
        | st.builds(Wider, inner, inner)
    ),
    max_leaves=20,
)

with_msgspec = ChildCodec(force="msgspec")
stdlib = ChildCodec(force="stdlib")


def test_both_codecs_are_under_test() -> None:
    assert with_msgspec.name.startswith("msgspec")
    assert stdlib.name == "stdlib"


def frame(codec: ChildCodec, value: Any) -> bytes | type[Exception]:
    """The frame of a ``result`` holding ``value``, or the fact it is refused."""
    try:
        return codec.encode(["result", 7, value])
    except (TypeError, ValueError, OverflowError):  # msgspec's; MsgpackError is a ValueError
        return Exception


def same(actual: Any, expected: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0 nor True),
    and floats compared by their bits (NaN payloads too)."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, float):
        return struct.pack(">d", actual) == struct.pack(">d", expected)
    if isinstance(expected, list | tuple):
        return len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(expected, dict):
        return len(actual) == len(expected) and all(
            same(ak, ek) and same(av, ev)
            for (ak, av), (ek, ev) in zip(actual.items(), expected.items(), strict=True)
        )
    if isinstance(expected, dt.datetime):
        return bool(actual == expected and actual.tzinfo == expected.tzinfo)
    return bool(actual == expected)


@fuzz
@given(values)
def test_both_codecs_write_the_same_bytes_or_both_refuse(value: Any) -> None:
    assert frame(stdlib, value) == frame(with_msgspec, value)


@fuzz
@given(values)
def test_the_kernel_reads_the_same_result_from_either(value: Any) -> None:
    data = frame(with_msgspec, value)
    if data is Exception:
        return
    assert isinstance(data, bytes)
    kernel: MessageCodec[ToKernel] = MessageCodec(ToKernel, "driver")
    (result,) = kernel.feed(data)
    assert isinstance(result, Result)
    # Each child codec reads it back as the kernel does (a kernel's Call may
    # carry these values as arguments).
    for codec in (stdlib, with_msgspec):
        (message,) = ChildCodec(force=codec.name.split()[0]).feed(data)
        assert same(message, ["result", 7, result.value])


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), "d6ff00000000"),
        (dt.datetime(2024, 1, 2, tzinfo=dt.UTC), "d6ff65935200"),
        (dt.datetime(2024, 1, 2, 0, 0, 0, 1, tzinfo=dt.UTC), "d7ff00000fa065935200"),
        (
            dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
            "c70cff00000000ffffffffffffffff",
        ),
        (dt.datetime(2024, 1, 2, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))), "d6ff65935200"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 6), "ba" + b"2024-01-02T03:04:05.000006".hex()),
        (dt.date(2024, 1, 2), "aa" + b"2024-01-02".hex()),
        (dt.time(3, 4, 5), "a8" + b"03:04:05".hex()),
        (dt.time(3, 4, tzinfo=dt.UTC), "a9" + b"03:04:00Z".hex()),
        (
            dt.time(3, 4, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
            "ae" + b"03:04:00-05:30".hex(),
        ),
        (dt.timedelta(days=1, seconds=3, microseconds=500000), "a8" + b"P1DT3.5S".hex()),
        (dt.timedelta(seconds=-1), "a5" + b"-PT1S".hex()),
        (dt.timedelta(0), "a3" + b"P0D".hex()),
        (uuid.UUID(int=1), "d924" + b"00000000-0000-0000-0000-000000000001".hex()),
        (decimal.Decimal("1.10"), "a4" + b"1.10".hex()),
        (Colour.NAME, "a4" + b"blue".hex()),
        (Colour.PAIR, "920102"),
        (Level.HIGH, "cd012c"),
        ({3}, "9103"),
        (frozenset({"a"}), "91a161"),
        (Point(1), "83a17801a179c0a75f68696464656e00"),
        (Slotted(2), "82a16202a16101"),
        (Record("n", 1), "82a46e616d65a16ea576616c756501"),
        (Wider(1, 2), "83a16303a16102a16201"),
        (b"\x00", "c40100"),
    ],
    ids=repr,
)  # fmt: skip
def test_each_type_has_the_documented_encoding(value: Any, wire: str) -> None:
    """The encodings docs/protocol.md lists, from both codecs."""
    assert packb(value).hex() == wire
    assert msgspec.msgpack.encode(value).hex() == wire


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),  # before year 1 in UTC
        dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-2))),
    ],
    ids=repr,
)
def test_a_datetime_out_of_range_in_utc_is_refused_by_both(value: Any) -> None:
    with pytest.raises(MsgpackError, match="out of range"):
        packb(value)
    with pytest.raises(OverflowError):
        msgspec.msgpack.encode(value)


class Text(str):
    pass


class Weird(dt.datetime):
    pass


@pytest.mark.parametrize(
    "value",
    [Text("x"), Weird(2024, 1, 1), decimal.Context(), Point],
    ids=lambda value: type(value).__name__,
)
def test_what_msgspec_refuses_stdlib_refuses(value: Any) -> None:
    assert frame(stdlib, value) is Exception
    assert frame(with_msgspec, value) is Exception


def test_a_str_subclass_is_a_valid_map_key_in_both() -> None:
    assert packb({Text("k"): 1}) == msgspec.msgpack.encode({Text("k"): 1}) == b"\x81\xa1k\x01"


@pytest.mark.parametrize(
    "wire",
    [
        "d6ff00000000",
        "d7ff00000fa065935200",
        "c70cff00000000ffffffffffffffff",
        "c70cff3b9ac9ff0000000000000000",  # 999,999,999 ns round up to the next second
        "c70cff000000000000003afff4417f",  # 9999-12-31T23:59:59Z, the last second
        "c70cff00000000fffffff1886e0900",  # 0001-01-01T00:00:00Z, the first
    ],
)
def test_timestamps_decode_as_msgspec_decodes_them(wire: str) -> None:
    data = bytes.fromhex(wire)
    expected = msgspec.msgpack.decode(data)
    assert isinstance(expected, dt.datetime)
    assert same(unpackb(data), expected)


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        ("d5ff0000", "4, 8 or 12 expected"),
        ("d7ff" + "ffffffff00000000", "nanoseconds out of range"),
        ("c70cff3b9ac9ff0000003afff4417f", "out of range"),  # rounds up past 9999
        ("c70cff00000000fffffff1886e08ff", "out of range"),  # a second before year 1
        ("d6ff0000", "truncated"),
    ],
)
def test_invalid_timestamps_are_refused_by_both(wire: str, match: str) -> None:
    data = bytes.fromhex(wire)
    with pytest.raises(MsgpackError, match=match):
        unpackb(data)
    with pytest.raises(msgspec.DecodeError):
        msgspec.msgpack.decode(data)
