"""PEP 440 versions and PEP 508 requirements, checked against ``packaging`` when present."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivebay.sandbox.pep440 import (
    parse_version,
    requirement_problem,
    specifier_problem,
    version_key,
)

ORDERED = [
    "0.9",
    "1.0.dev0",
    "1.0a1.dev1",
    "1.0a1",
    "1.0b2",
    "1.0rc1",
    "1.0",
    "1.0.post1.dev0",
    "1.0.post1",
    "1.2.0",
    "1.10.0",
    "2!0.1",
]


def test_version_key_orders_common_forms() -> None:
    assert sorted(reversed(ORDERED), key=version_key) == ORDERED


def test_trailing_zeros_are_the_same_version() -> None:
    assert version_key("1.0") == version_key("1.0.0") == version_key("1")
    assert version_key("1.0.0") < version_key("1.0.1")


def test_version_key_rejects_non_versions() -> None:
    with pytest.raises(ValueError, match=r"not a PEP 440 version: '1\.x'"):
        version_key("1.x")


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("1.0.0", "1.0.0"),
        ("V1.0-RC1", "1.0rc1"),
        ("1.0alpha", "1.0a0"),
        ("1.0.post", "1.0.post0"),
        ("1.0-3", "1.0.post3"),
        ("1.0_dev4", "1.0.dev4"),
        ("0!01.02", "1.2"),
    ],
)
def test_normal_form(text: str, normal: str) -> None:
    parsed = parse_version(text)
    assert parsed is not None and parsed.normal == normal


@pytest.mark.parametrize("text", ["", "1.", "1.x", "a1", "1.0+local", "1..0", "1.0-"])
def test_not_versions(text: str) -> None:
    assert parse_version(text) is None


@pytest.mark.parametrize(
    "text", [">=3.11", ">=3.11,<4", "==3.*", "~=3.11", "===weird", " != 3.12 "]
)
def test_specifiers(text: str) -> None:
    assert specifier_problem(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("3.11", "'3.11' has no comparison operator (==, >=, ~=, ...)"),
        (">=3.x", "'3.x' is not a PEP 440 version"),
        ("~=3", "'~=' needs two release numbers, as in ~=3.0"),
        (">=3.11,", "'' has no comparison operator (==, >=, ~=, ...)"),
    ],
)
def test_bad_specifiers(text: str, problem: str) -> None:
    assert specifier_problem(text) == problem


@pytest.mark.parametrize(
    "text",
    [
        "pyyaml",
        "pyyaml==5.4.1",
        "PyYAML[libyaml] >=5, <7",
        "zope.interface (>=5.0)",
        "msgspec; python_version >= '3.11' and platform_system != \"Windows\"",
    ],
)
def test_requirements(text: str) -> None:
    assert requirement_problem(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("-r other.txt", "it holds a control character or a word starting with '-'"),
        (
            "pyyaml\n--index-url http://evil",
            "it holds a control character or a word starting with '-'",
        ),
        ("py yaml", "'yaml' has no comparison operator (==, >=, ~=, ...)"),
        ("pyyaml; $(rm -rf)", "it holds a control character or a word starting with '-'"),
        ("pyyaml; `id`", "'`id`' is not an environment marker"),
        (
            "tool @ file:///tmp/x.whl",
            "direct references (name @ url) are not allowed, wheels go in lib/",
        ),
        ("[extra]", "not PEP 508 syntax"),
    ],
)
def test_bad_requirements(text: str, problem: str) -> None:
    assert requirement_problem(text) == problem


# -- the same answers as packaging, the reference implementation -------------------------

numbers = st.integers(min_value=0, max_value=30).map(str)
separators = st.sampled_from(["", ".", "-", "_"])
versions = st.builds(
    lambda epoch, release, pre, post, dev: epoch + release + pre + post + dev,
    st.sampled_from(["", "1!", "0!"]),
    st.lists(numbers, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["", "a", "b", "rc", "alpha", "beta", "c", "pre", "preview"]).flatmap(
        lambda label: (
            st.just("")
            if not label
            else st.builds(
                lambda s, n: s + label + n, separators, st.sampled_from(["", "0", "1", "12"])
            )
        )
    ),
    st.sampled_from(["", ".post1", "-2", ".post", "post3", "-r4", ".rev5"]),
    st.sampled_from(["", ".dev0", "dev1", "-dev", "_dev7"]),
)


@settings(max_examples=200, deadline=None)
@given(text=versions)
def test_normal_form_matches_packaging(text: str) -> None:
    packaging_version = pytest.importorskip("packaging.version")
    parsed = parse_version(text)
    assert parsed is not None
    assert parsed.normal == str(packaging_version.Version(text))


@settings(max_examples=200, deadline=None)
@given(a=versions, b=versions)
def test_ordering_matches_packaging(a: str, b: str) -> None:
    packaging_version = pytest.importorskip("packaging.version")
    va, vb = packaging_version.Version(a), packaging_version.Version(b)
    ka, kb = version_key(a), version_key(b)
    assert (ka < kb, ka == kb) == (va < vb, va == vb)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="0123456789.!-_abcdeilnoprstvV ", max_size=12))
def test_validity_matches_packaging(text: str) -> None:
    packaging_version = pytest.importorskip("packaging.version")
    try:
        packaging_version.Version(text)
    except packaging_version.InvalidVersion:
        expected = False
    else:
        expected = True
    assert (parse_version(text) is not None) == expected
