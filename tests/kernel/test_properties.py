"""Property bags: each type, each problem as its exact line, command-line words."""

from __future__ import annotations

import datetime
import string
from collections.abc import Sequence
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivebay.kernel.resources.properties import (
    INT_MAX,
    INT_MIN,
    PropertyErrors,
    convert_cli,
    merge,
    validate,
)
from drivebay.protocol.errors import RequestError
from drivebay.sandbox.manifest_schema import PropertySpec, PropertyType

NFS = (
    PropertySpec("host", "string", required=True, max_length=255),
    PropertySpec("size_gb", "number"),
    PropertySpec("thin", "boolean"),
    PropertySpec("expires", "date"),
)


def problems(values: dict[str, Any], schema: Sequence[PropertySpec] = NFS) -> list[str]:
    with pytest.raises(PropertyErrors) as caught:
        validate(schema, values, driver="nfs-storage")
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def cli_problems(*words: str) -> list[str]:
    with pytest.raises(PropertyErrors) as caught:
        convert_cli(NFS, words)
    return caught.value.problems


# -- validate: good values ------------------------------------------------------


def test_a_full_bag_is_returned_in_schema_order() -> None:
    bag = {"expires": "2025-12-31", "thin": False, "size_gb": 10, "host": "nas"}
    result = validate(NFS, bag, driver="nfs-storage")
    assert result == bag
    assert list(result) == ["host", "size_gb", "thin", "expires"]


def test_optional_properties_may_be_left_out() -> None:
    assert validate(NFS, {"host": "nas"}, driver="nfs-storage") == {"host": "nas"}


@pytest.mark.parametrize("number", [0, -3, 10, 2.5, -0.0, 1e300, INT_MIN, INT_MAX])
def test_numbers_are_ints_or_floats(number: float) -> None:
    result = validate(NFS, {"host": "h", "size_gb": number}, driver="nfs-storage")
    assert result["size_gb"] == number
    assert type(result["size_gb"]) is type(number)


def test_a_string_of_exactly_max_length_is_accepted() -> None:
    assert validate(NFS, {"host": "h" * 255}, driver="nfs-storage")["host"] == "h" * 255


def test_max_length_counts_characters_not_bytes() -> None:
    assert validate(NFS, {"host": "é" * 255}, driver="nfs-storage")["host"] == "é" * 255


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("2025-12-31", "2025-12-31"),
        ("2025-12-31T10:00", "2025-12-31T10:00:00"),
        ("2025-12-31 10:00:05", "2025-12-31T10:00:05"),
        ("2025-12-31T10:00:00Z", "2025-12-31T10:00:00+00:00"),
        ("2025-12-31T10:00:00.5+02:00", "2025-12-31T10:00:00.500000+02:00"),
        (datetime.date(2025, 1, 2), "2025-01-02"),
        (datetime.datetime(2025, 1, 2, 3, 4, 5), "2025-01-02T03:04:05"),
    ],
)
def test_dates_are_normalized_to_iso_strings(given: Any, normal: str) -> None:
    assert validate(NFS, {"host": "h", "expires": given}, driver="x")["expires"] == normal


# -- validate: each problem's exact line ------------------------------------------


def test_missing_required_property() -> None:
    assert problems({}) == ["host: required; add host=VALUE"]


def test_unknown_property_with_a_close_match() -> None:
    assert problems({"host": "h", "hostname": "h"}) == [
        "hostname: unknown property of nfs-storage; did you mean 'host'?"
    ]


def test_unknown_property_without_a_close_match() -> None:
    assert problems({"host": "h", "colour": "red"}) == [
        "colour: unknown property of nfs-storage; its properties are host, size_gb, thin, expires"
    ]


def test_unknown_property_of_a_driver_without_properties() -> None:
    assert problems({"colour": "red"}, schema=()) == [
        "colour: unknown property of nfs-storage; it declares no properties, remove it"
    ]


def test_string_too_long() -> None:
    assert problems({"host": "h" * 300}) == ["host: longer than 255 characters (300)"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [(10, "10"), (True, "true"), (None, "null"), (["a"], "a list"), ({"a": 1}, "a mapping")],
)
def test_string_of_the_wrong_type(value: Any, shown: str) -> None:
    assert problems({"host": value}) == [
        f"host: expected a string, got {shown}; write text, for example host=text"
    ]


def test_string_with_a_lone_surrogate() -> None:
    assert problems({"host": "a\udcffb"}) == [
        "host: not valid text (it holds a lone surrogate); write it as UTF-8 text"
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [("ten", "'ten'"), ("10", "'10'"), (True, "true"), (False, "false"), (None, "null")],
)
def test_number_of_the_wrong_type(value: Any, shown: str) -> None:
    assert problems({"host": "h", "size_gb": value}) == [
        f"size_gb: expected a number, got {shown}; write a number, for example 10"
    ]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_number_not_finite(value: float) -> None:
    assert problems({"host": "h", "size_gb": value}) == [
        f"size_gb: expected a finite number, got {value}; write a number, for example 10"
    ]


@pytest.mark.parametrize("value", [INT_MAX + 1, INT_MIN - 1, 10**100])
def test_number_out_of_range(value: int) -> None:
    assert problems({"host": "h", "size_gb": value}) == [
        "size_gb: out of range; write a number between -9223372036854775808 and 9223372036854775807"
    ]


@pytest.mark.parametrize(("value", "shown"), [("true", "'true'"), (1, "1"), (0, "0")])
def test_boolean_of_the_wrong_type(value: Any, shown: str) -> None:
    assert problems({"host": "h", "thin": value}) == [
        f"thin: expected true or false, got {shown}; write true or false"
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("tomorrow", "'tomorrow'"),
        ("2025-02-30", "'2025-02-30'"),
        ("20251231", "'20251231'"),
        ("2025-W01-1", "'2025-W01-1'"),
        ("2025-12-31T25:00", "'2025-12-31T25:00'"),
        ("2025-12-31\n", "'2025-12-31\\n'"),
        ("2025-12-31T10", "'2025-12-31T10'"),
        ("2025-12-31T10:00+01", "'2025-12-31T10:00+01'"),
        ("2025-12-31T10:00:00+00:00:30", "'2025-12-31T10:00:00+00:00:30'"),
        ("2025-12-31T10:00:00.1234567", "'2025-12-31T10:00:00.1234567'"),
        ("\uff12\uff10\uff12\uff15-12-31", "'\uff12\uff10\uff12\uff15-12-31'"),
        (20251231, "20251231"),
    ],
)
def test_date_not_iso_8601(value: Any, shown: str) -> None:
    assert problems({"host": "h", "expires": value}) == [
        f"expires: expected a date, got {shown}; write an ISO 8601 date, for example 2025-12-31"
    ]


def test_long_values_are_cut_short_in_the_line() -> None:
    assert problems({"host": "h", "size_gb": "x" * 100}) == [
        f"size_gb: expected a number, got '{'x' * 40}'...; write a number, for example 10"
    ]


def test_control_characters_in_keys_and_values_stay_on_one_line() -> None:
    assert problems({"host": "h", "a\nb": 1, "size_gb": "1\n2"}) == [
        "a\\nb: unknown property of nfs-storage; its properties are host, size_gb, thin, expires",
        "size_gb: expected a number, got '1\\n2'; write a number, for example 10",
    ]


def test_every_problem_is_listed_together() -> None:
    error_lines = problems(
        {"size_gb": "ten", "hostname": "nas", "thin": "yes", "expires": "soon"},
    )
    assert error_lines == [
        "size_gb: expected a number, got 'ten'; write a number, for example 10",
        "hostname: unknown property of nfs-storage; did you mean 'host'?",
        "thin: expected true or false, got 'yes'; write true or false",
        "expires: expected a date, got 'soon'; write an ISO 8601 date, for example 2025-12-31",
        "host: required; add host=VALUE",
    ]


def test_property_errors_are_request_errors() -> None:
    with pytest.raises(RequestError) as caught:
        validate(NFS, {}, driver="nfs-storage")
    assert caught.value.exit_code == 1


# -- the command line ----------------------------------------------------------------


def test_cli_values_take_the_declared_types() -> None:
    words = ["host=nas", "size_gb=10", "thin=true", "expires=2025-12-31"]
    assert convert_cli(NFS, words) == {
        "host": "nas",
        "size_gb": 10,
        "thin": True,
        "expires": "2025-12-31",
    }


@pytest.mark.parametrize(
    ("text", "number"),
    [("10", 10), ("-3", -3), ("+7", 7), ("2.5", 2.5), ("10.", 10.0), (".5", 0.5), ("1e3", 1e3)],
)
def test_cli_numbers(text: str, number: float) -> None:
    result = convert_cli(NFS, [f"size_gb={text}"])["size_gb"]
    assert result == number
    assert type(result) is type(number)


@pytest.mark.parametrize("text", ["ten", "", "1_000", "0x10", "nan", "inf", "1e", " 1"])
def test_cli_text_that_is_no_number(text: str) -> None:
    shown = repr(text)
    assert cli_problems(f"size_gb={text}") == [
        f"size_gb: expected a number, got {shown}; write a number, for example 10"
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("NO", False),
        ("0", False),
    ],
)
def test_cli_booleans(text: str, value: bool) -> None:
    assert convert_cli(NFS, [f"thin={text}"]) == {"thin": value}


def test_cli_text_that_is_no_boolean() -> None:
    assert cli_problems("thin=maybe") == [
        "thin: expected true or false, got 'maybe'; write true, false, yes or no"
    ]


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("2025-12-31", "2025-12-31"),
        ("2025-12-31T08:30", "2025-12-31T08:30:00"),
        ("2025-12-31T08:30:00+01:00", "2025-12-31T08:30:00+01:00"),
    ],
)
def test_cli_dates(text: str, normal: str) -> None:
    assert convert_cli(NFS, [f"expires={text}"]) == {"expires": normal}


def test_cli_text_that_is_no_date() -> None:
    assert cli_problems("expires=next week") == [
        "expires: expected a date, got 'next week'; write an ISO 8601 date, for example 2025-12-31"
    ]


def test_cli_strings_are_kept_as_written() -> None:
    assert convert_cli(NFS, ["host=10", "host2=a=b"]) == {"host": "10", "host2": "a=b"}


def test_cli_json_values_are_passed_as_decoded() -> None:
    words = ['host:="nas"', "size_gb:=10", "thin:=false", 'extra:=[1, {"a": null}]']
    assert convert_cli(NFS, words) == {
        "host": "nas",
        "size_gb": 10,
        "thin": False,
        "extra": [1, {"a": None}],
    }


def test_cli_json_is_then_validated() -> None:
    values = convert_cli(NFS, ["host:=10"])
    assert problems(values) == [
        "host: expected a string, got 10; write text, for example host=text"
    ]


def test_cli_json_null_asks_to_remove_the_key() -> None:
    assert convert_cli(NFS, ["size_gb:=null"]) == {"size_gb": None}


@pytest.mark.parametrize(
    ("word", "reason"),
    [
        ("size_gb:=ten", "Expecting value"),
        ("size_gb:=", "Expecting value"),
        ("size_gb:=NaN", "NaN is not a JSON number"),
        ("size_gb:=[1,", "Expecting value"),
        ("size_gb:=1 2", "Extra data"),
    ],
)
def test_cli_bad_json(word: str, reason: str) -> None:
    assert cli_problems(word) == [
        f"size_gb: not valid JSON after ':=' ({reason}); write JSON such as 10, true or "
        '"text" (quoted for the shell), or use key=value'
    ]


def test_cli_word_without_equals() -> None:
    assert cli_problems("host") == ["'host': expected key=value or key:=JSON"]


def test_cli_word_without_key() -> None:
    assert cli_problems("=nas", ":=1") == [
        "'=nas': no key before '='; write key=value or key:=JSON",
        "':=1': no key before '='; write key=value or key:=JSON",
    ]


def test_cli_key_given_twice() -> None:
    assert cli_problems("host=a", 'host:="b"') == ["host: given more than once; give each key once"]


def test_cli_unknown_keys_are_text_left_for_validate() -> None:
    values = convert_cli(NFS, ["host=nas", "hostname=nas"])
    assert values == {"host": "nas", "hostname": "nas"}
    assert problems(values) == ["hostname: unknown property of nfs-storage; did you mean 'host'?"]


def test_cli_lists_every_problem_together() -> None:
    assert cli_problems("size_gb=ten", "thin", "thin=maybe", "expires:={") == [
        "size_gb: expected a number, got 'ten'; write a number, for example 10",
        "'thin': expected key=value or key:=JSON",
        "thin: expected true or false, got 'maybe'; write true, false, yes or no",
        "expires: not valid JSON after ':=' (Expecting property name enclosed in double quotes);"
        ' write JSON such as 10, true or "text" (quoted for the shell), or use key=value',
    ]


# -- resource set ------------------------------------------------------------------


def test_merge_replaces_adds_and_removes() -> None:
    old = {"host": "a", "size_gb": 10, "thin": True}
    assert merge(old, {"host": "b", "expires": "2025-01-01", "thin": None, "gone": None}) == {
        "host": "b",
        "size_gb": 10,
        "expires": "2025-01-01",
    }
    assert old == {"host": "a", "size_gb": 10, "thin": True}


def test_resource_set_from_the_command_line() -> None:
    stored = {"host": "a", "size_gb": 10}
    changes = convert_cli(NFS, ["size_gb:=null", "thin=yes"])
    merged = validate(NFS, merge(stored, changes), driver="nfs-storage")
    assert merged == {"host": "a", "thin": True}


# -- any valid bag round-trips unchanged ---------------------------------------------

_KEYS = st.text(string.ascii_letters + "_", min_size=1, max_size=12)
_ISO_DATES = st.dates().map(datetime.date.isoformat)
_OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
)
_ISO_DATETIMES = st.datetimes(timezones=st.none() | _OFFSETS).map(datetime.datetime.isoformat)


@st.composite
def schemas_and_bags(draw: st.DrawFn) -> tuple[list[PropertySpec], dict[str, Any]]:
    keys = draw(st.lists(_KEYS, unique=True, max_size=8))
    schema: list[PropertySpec] = []
    bag: dict[str, Any] = {}
    for key in keys:
        kind: PropertyType = draw(st.sampled_from(get_args(PropertyType)))
        max_length = draw(st.none() | st.integers(1, 50)) if kind == "string" else None
        spec = PropertySpec(key, kind, draw(st.booleans()), max_length)
        schema.append(spec)
        if spec.required or draw(st.booleans()):
            bag[key] = draw(_values(kind, max_length))
    return schema, bag


def _values(kind: str, max_length: int | None) -> st.SearchStrategy[Any]:
    if kind == "string":
        return st.text(max_size=max_length if max_length is not None else 100)
    if kind == "number":
        return st.integers(INT_MIN, INT_MAX) | st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    return _ISO_DATES | _ISO_DATETIMES


@given(schemas_and_bags())
def test_any_valid_bag_round_trips_unchanged(
    case: tuple[list[PropertySpec], dict[str, Any]],
) -> None:
    schema, bag = case
    result = validate(schema, bag, driver="any")
    assert result == bag
    assert validate(schema, result, driver="any") == result


@given(schemas_and_bags())
def test_any_valid_bag_survives_the_command_line(
    case: tuple[list[PropertySpec], dict[str, Any]],
) -> None:
    schema, bag = case
    words = [f"{key}={value}" for key, value in bag.items() if isinstance(value, str)]
    converted = convert_cli(schema, words)
    assert converted == {key: value for key, value in bag.items() if isinstance(value, str)}
