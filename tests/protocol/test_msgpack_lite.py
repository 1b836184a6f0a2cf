"""msgpack_lite writes the bytes msgspec writes, reads what msgspec writes, and
refuses anything else with MsgpackError, quickly."""

from __future__ import annotations

import ast
import collections
import enum
import math
import struct
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, get_args, get_origin

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivebay.protocol import messages, msgpack_lite
from drivebay.protocol.msgpack_lite import MAX_DEPTH, MsgpackError, packb, unpackb

encode = msgspec.msgpack.encode
decode = msgspec.msgpack.decode

# No example database: the suite must not write into the work tree.
fuzz = settings(deadline=None, database=None)

INT_BOUNDARIES = [
    0, 1, 127, 128, 255, 256, 2**15, 65535, 65536, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1,
    -1, -32, -33, -128, -129, -(2**15), -(2**15) - 1, -(2**31), -(2**31) - 1, -(2**63),
]  # fmt: skip

ints = st.integers(-(2**63), 2**64 - 1) | st.sampled_from(INT_BOUNDARIES)
hashable = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=6,
)
scalars: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | ints
    | st.floats()
    | st.text()
    | st.binary()
    | st.binary().map(bytearray)
    | st.binary().map(lambda data: memoryview(data))
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.lists(inner, max_size=6).map(tuple)
        | st.dictionaries(hashable, inner, max_size=6)
    ),
    max_leaves=24,
)


def decoded_form(value: Any, *, key: bool = False) -> Any:
    """What ``value`` looks like after a round trip: arrays are lists (tuples
    as map keys), every bytes-like is bytes."""
    if isinstance(value, list | tuple):
        items = [decoded_form(item, key=key) for item in value]
        return tuple(items) if key else items
    if isinstance(value, dict):
        return {decoded_form(k, key=True): decoded_form(v) for k, v in value.items()}
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def assert_same(actual: Any, expected: Any) -> None:
    """Equality that also checks types, map order and float bits (NaN == NaN)."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, float):
        assert struct.pack(">d", actual) == struct.pack(">d", expected)
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    elif isinstance(expected, dict):
        assert len(actual) == len(expected), (actual, expected)
        for (ak, av), (ek, ev) in zip(actual.items(), expected.items(), strict=True):
            assert_same(ak, ek)
            assert_same(av, ev)
    else:
        assert actual == expected


def contains_ext(value: Any) -> bool:
    if isinstance(value, msgspec.msgpack.Ext):
        return True
    if isinstance(value, list | tuple):
        return any(contains_ext(item) for item in value)
    if isinstance(value, dict):
        return any(contains_ext(k) or contains_ext(v) for k, v in value.items())
    return False


def nested(depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


# -- agreement with msgspec ----------------------------------------------------


@fuzz
@given(values)
def test_encodes_byte_for_byte_like_msgspec(value: Any) -> None:
    assert packb(value) == encode(value)


@fuzz
@given(values)
def test_decodes_what_msgspec_encodes(value: Any) -> None:
    data = encode(value)
    expected = decoded_form(value)
    assert_same(unpackb(data), expected)
    assert_same(unpackb(bytearray(data)), expected)
    assert_same(unpackb(memoryview(data)), expected)


@fuzz
@given(values)
def test_msgspec_decodes_what_it_encodes(value: Any) -> None:
    assert_same(decode(packb(value)), decoded_form(value))


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "cc80"),
        (255, "ccff"),
        (256, "cd0100"),
        (2**15, "cd8000"),  # non-negative ints are always unsigned
        (65535, "cdffff"),
        (65536, "ce00010000"),
        (2**31, "ce80000000"),
        (2**32 - 1, "ceffffffff"),
        (2**32, "cf0000000100000000"),
        (2**63, "cf8000000000000000"),
        (2**64 - 1, "cfffffffffffffffff"),
        (-1, "ff"),
        (-32, "e0"),
        (-33, "d0df"),
        (-128, "d080"),
        (-129, "d1ff7f"),
        (-(2**15), "d18000"),
        (-(2**15) - 1, "d2ffff7fff"),
        (-(2**31), "d280000000"),
        (-(2**31) - 1, "d3ffffffff7fffffff"),
        (-(2**63), "d38000000000000000"),
        (None, "c0"),
        (False, "c2"),
        (True, "c3"),
        (0.0, "cb0000000000000000"),  # floats are always float64
        (-0.0, "cb8000000000000000"),
        (1.5, "cb3ff8000000000000"),
        (math.inf, "cb7ff0000000000000"),
        (math.nan, "cb7ff8000000000000"),
    ],
    ids=repr,
)
def test_scalar_encodings(value: Any, wire: str) -> None:
    assert packb(value).hex() == wire
    assert encode(value).hex() == wire
    assert_same(unpackb(bytes.fromhex(wire)), value)


def test_nan_payload_and_sign_survive() -> None:
    for bits in ("7ff0000000000001", "fff8000000000000", "7ff4000000000000"):
        value = struct.unpack(">d", bytes.fromhex(bits))[0]
        assert packb(value) == encode(value) == bytes.fromhex("cb" + bits)
        assert struct.pack(">d", unpackb(packb(value))).hex() == bits


def test_float32_is_read_though_never_written() -> None:
    assert unpackb(b"\xca\x3f\xc0\x00\x00") == decode(b"\xca\x3f\xc0\x00\x00") == 1.5


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_int_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(MsgpackError, match="int too"):
        packb(value)
    with pytest.raises(OverflowError):
        encode(value)


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, "a0"),
        (1, "a1"),
        (31, "bf"),
        (32, "d920"),  # str8, which arrays and maps lack
        (255, "d9ff"),
        (256, "da0100"),
        (65535, "daffff"),
        (65536, "db00010000"),
    ],
)
def test_str_sizes(n: int, header: str) -> None:
    value = "a" * n
    data = packb(value)
    assert data == encode(value)
    assert data.hex().startswith(header)
    assert len(data) == len(header) // 2 + n
    assert unpackb(data) == value


def test_str_size_counts_utf8_bytes() -> None:
    value = "é" * 16  # 16 characters, 32 bytes
    assert packb(value)[:2] == b"\xd9\x20" == encode(value)[:2]
    assert unpackb(packb(value)) == value


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, "c400"),
        (1, "c401"),
        (255, "c4ff"),
        (256, "c50100"),
        (65535, "c5ffff"),
        (65536, "c600010000"),
    ],
)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bin_sizes(n: int, header: str, kind: type) -> None:
    value = kind(b"\x07" * n)
    data = packb(value)
    assert data == encode(value)
    assert data.hex().startswith(header)
    assert_same(unpackb(data), b"\x07" * n)


def test_memoryview_counts_bytes_not_items() -> None:
    value = memoryview(bytes(range(8))).cast("I")
    assert packb(value) == encode(value) == b"\xc4\x08" + bytes(range(8))


@pytest.mark.parametrize(
    ("n", "header"),
    [(0, "90"), (1, "91"), (15, "9f"), (16, "dc0010"), (65535, "dcffff"), (65536, "dd00010000")],
)
def test_array_sizes(n: int, header: str) -> None:
    value = list(range(n))
    data = packb(value)
    assert data == encode(value) == packb(tuple(value))
    assert data.hex().startswith(header)
    assert unpackb(data) == value


@pytest.mark.parametrize(
    ("n", "header"),
    [(0, "80"), (1, "81"), (15, "8f"), (16, "de0010"), (65535, "deffff"), (65536, "df00010000")],
)
def test_map_sizes(n: int, header: str) -> None:
    value = {i: None for i in range(n)}
    data = packb(value)
    assert data == encode(value)
    assert data.hex().startswith(header)
    assert unpackb(data) == value


# -- what msgspec also accepts, or also refuses --------------------------------


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Mode(enum.StrEnum):
    FAST = "fast"


Point = collections.namedtuple("Point", "x y")


class MyDict(dict[str, int]):
    pass


class MyList(list[int]):
    pass


@pytest.mark.parametrize(
    "value",
    [
        Colour.RED,
        Level.HIGH,
        Mode.FAST,
        Point(1, 2),
        MyDict(a=1),
        MyList([1, 2]),
        collections.OrderedDict(b=1, a=2),
        {1, 2, 3},
        frozenset({"x"}),
        {"k": [Colour.RED, (Mode.FAST,)]},
    ],
    ids=repr,
)
def test_subclasses_and_enums_like_msgspec(value: Any) -> None:
    assert packb(value) == encode(value)


class MyStr(str):
    pass


class MyInt(int):
    pass


@pytest.mark.parametrize(
    "value",
    [object(), 1j, range(3), iter([]), MyStr("x"), MyInt(1), Path("/")],
    ids=lambda value: type(value).__name__,
)
def test_unsupported_types_are_refused_by_name(value: Any) -> None:
    with pytest.raises(MsgpackError, match=type(value).__qualname__):
        packb({"nested": [value]})
    with pytest.raises(TypeError):
        encode(value)


def test_unencodable_str_is_refused() -> None:
    with pytest.raises(MsgpackError, match="Unicode"):
        packb("\ud800")


def test_nesting_limit_when_encoding() -> None:
    assert packb(nested(MAX_DEPTH)) == encode(nested(MAX_DEPTH))
    with pytest.raises(MsgpackError, match="nested"):
        packb(nested(MAX_DEPTH + 1))
    with pytest.raises(MsgpackError, match="nested"):
        packb({"a": {"b": nested(MAX_DEPTH)}})


def test_cycle_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(MsgpackError, match="nested"):
        packb(loop)


# -- map keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "value"),
    [
        ("8192010203", {(1, 2): 3}),
        ("81920192020301", {(1, (2, 3)): 1}),
        ("82c001c381c202", {None: 1, True: {False: 2}}),
    ],
)
def test_array_keys_become_tuples_like_msgspec(data: str, value: Any) -> None:
    raw = bytes.fromhex(data)
    assert unpackb(raw) == decode(raw) == value


@pytest.mark.parametrize("data", ["818001", "81918001", "81929180 0101"])
def test_unhashable_keys_are_refused(data: str) -> None:
    raw = bytes.fromhex(data.replace(" ", ""))
    with pytest.raises(MsgpackError, match="hash"):
        unpackb(raw)
    with pytest.raises(msgspec.DecodeError):
        decode(raw)


# -- hostile input -----------------------------------------------------------------


@fuzz
@given(values)
def test_every_proper_prefix_is_refused(value: Any) -> None:
    data = packb(value)
    for end in range(len(data)):
        with pytest.raises(MsgpackError):
            unpackb(data[:end])


@fuzz
@given(values, st.binary(min_size=1, max_size=4))
def test_trailing_bytes_are_refused(value: Any, extra: bytes) -> None:
    with pytest.raises(MsgpackError, match="trailing"):
        unpackb(packb(value) + extra)


def _agrees_with_msgspec(data: bytes) -> None:
    """Either both decoders refuse ``data`` or both read the same value;
    msgspec alone may read ext types, which msgpack_lite refuses."""
    try:
        expected = decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec lets the latter through
        expected = ...
    try:
        actual = unpackb(data)
    except MsgpackError:
        assert expected is ... or contains_ext(expected)
    else:
        assert expected is not ...
        assert_same(actual, expected)


@fuzz
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_msgpack_error(data: bytes) -> None:
    _agrees_with_msgspec(data)


@fuzz
@given(values, st.data())
def test_corrupted_encodings_decode_or_raise_msgpack_error(value: Any, draw: st.DataObject) -> None:
    data = bytearray(packb(value))
    for _ in range(draw.draw(st.integers(1, 3))):
        data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    _agrees_with_msgspec(bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        "",
        "a2ff",  # str cut short
        "d9",  # str8 without its length
        "cd01",  # uint16 cut short
        "cb000000",  # float64 cut short
        "92c0",  # array missing an item
        "82a161c0a162",  # map missing a value
        "dbffffffff",  # str32 declaring 4 GiB
        "c6ffffffff",  # bin32 declaring 4 GiB
        "ddffffffff",  # array32 declaring 4 G items
        "dfffffffff",  # map32 declaring 4 G pairs
        "dc0003c0c0",  # array16 declaring more than it holds
    ],
)
def test_truncated_input_is_refused(data: str) -> None:
    with pytest.raises(MsgpackError, match="truncated"):
        unpackb(bytes.fromhex(data))


@pytest.mark.parametrize(
    ("header", "kind"),
    [("dbffffffff", "str"), ("c6ffffffff", "bin"), ("ddffffffff", "array"), ("dfffffffff", "map")],
)
def test_impossible_length_fails_before_reading_on(header: str, kind: str) -> None:
    """The declared length is checked against what is left, not discovered item by item."""
    with pytest.raises(
        MsgpackError, match=f"truncated input: {kind} at byte 5 declares 4294967295"
    ):
        unpackb(bytes.fromhex(header) + b"\x00" * 100_000)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("c1", "0xc1"),  # never used
        ("d40000", "0xd4"),  # fixext 1
        ("c7010500", "0xc7"),  # ext 8
        ("9201d8" + "00" * 17, "0xd8"),  # fixext 16 inside an array
        ("a1ff", "UTF-8"),
        ("d901c3", "UTF-8"),
        ("a2c328", "UTF-8"),
    ],
)
def test_garbage_is_refused(data: str, match: str) -> None:
    with pytest.raises(MsgpackError, match=match):
        unpackb(bytes.fromhex(data))


@pytest.mark.parametrize("unit", [b"\x91", b"\x81\xc0", b"\xdc\x00\x01", b"\x81\x91"])
def test_nesting_bomb_fails_fast(unit: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(MsgpackError, match="nested"):
        unpackb(unit * 100_000)
    assert time.perf_counter() - start < 0.5


def test_nesting_limit_when_decoding() -> None:
    assert unpackb(b"\x91" * MAX_DEPTH + b"\xc0") == nested(MAX_DEPTH)
    with pytest.raises(MsgpackError, match="nested"):
        unpackb(b"\x91" * (MAX_DEPTH + 1) + b"\xc0")


def test_deep_caller_stack_gives_msgpack_error() -> None:
    """Even a caller already near the recursion limit gets MsgpackError."""
    limit = sys.getrecursionlimit()
    depth = 0
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    sys.setrecursionlimit(depth + 60)
    try:
        with pytest.raises(MsgpackError, match="too deeply"):
            unpackb(b"\x91" * 200 + b"\xc0")
        with pytest.raises(MsgpackError, match="too deeply"):
            packb(nested(200))
    finally:
        sys.setrecursionlimit(limit)


# -- the protocol's messages -------------------------------------------------------

MESSAGE_CLASSES = [
    cls
    for name, cls in vars(messages).items()
    if isinstance(cls, type)
    and issubclass(cls, msgspec.Struct)
    and cls.__module__ == messages.__name__
    and not name.startswith("_")
]

FIELD_SAMPLES: dict[Any, Any] = {
    int: 7,
    str: "s",
    float: 2.5,
    bool: True,
    Any: {"k": [1, -2.5, None, b"\x00", "é"]},
}


def sample(field_type: Any) -> Any:
    if field_type in FIELD_SAMPLES:
        return FIELD_SAMPLES[field_type]
    if get_origin(field_type) is dict:
        value_type = get_args(field_type)[1]
        if isinstance(value_type, type) and issubclass(value_type, msgspec.Struct):
            fields = msgspec.structs.fields(value_type)
            return {"op": value_type(**{f.name: sample(f.type) for f in fields})}
        return {"a": 1, "b": [True, "x"], "c": {"d": -40000}}
    if get_origin(field_type) is list:
        return ["x", "y"]
    raise AssertionError(f"no sample for field type {field_type!r}: extend sample()")


def test_call_matches_its_array() -> None:
    call = messages.Call(id=1, resource_id="r", op="echo", args={"a": 1}, timeout_s=0.0)
    assert encode(call) == packb(["call", 1, "r", "echo", {"a": 1}, 0.0, "", 0])


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda cls: cls.__name__)
def test_message_is_its_tagged_array(cls: type[msgspec.Struct]) -> None:
    fields = msgspec.structs.fields(cls)
    message = cls(**{field.name: sample(field.type) for field in fields})
    tag = cls.__struct_config__.tag  # None: a part of a message (OperationInfo)
    # A nested Struct travels as its array (array_like), as the child sends it.
    values = [
        msgspec.to_builtins(getattr(message, field.name), builtin_types=(bytes,))
        for field in fields
    ]
    wire = values if tag is None else [tag, *values]
    assert encode(message) == packb(wire)
    assert unpackb(encode(message)) == wire
    assert decode(packb(wire), type=cls) == message


def test_message_classes_were_found() -> None:
    assert messages.Call in MESSAGE_CLASSES
    assert messages.Hello in MESSAGE_CLASSES


# -- the module itself ---------------------------------------------------------------


def test_imports_only_the_standard_library() -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(Path(msgpack_lite.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
