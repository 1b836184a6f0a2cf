"""Hostile input of any shape ends in a BundleError line, never in a crash.

Hypothesis feeds random bytes, damaged zips and random YAML to the reader and
the manifest parser; the only exception allowed out is ``BundleError``, and
its message is one line.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivebay.protocol.errors import BundleError
from drivebay.sandbox.bundle_reader import read_bundle
from drivebay.sandbox.manifest import parse_manifest
from tests.sandbox.bundles import make_bundle, zip_bundle

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def read_or_reject(path: Path) -> None:
    try:
        read_bundle(path)
    except BundleError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{path.name}: ")


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_as_a_zip(tmp_path: Path, data: bytes) -> None:
    target = tmp_path / "x.zip"
    target.write_bytes(data)
    read_or_reject(target)


@FUZZ
@given(
    damage=st.lists(
        st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=8)), max_size=4
    )
)
def test_damaged_zip(tmp_path: Path, damage: list[tuple[int, bytes]]) -> None:
    source = tmp_path / "source"
    if not source.exists():
        source.mkdir()
        zip_bundle(make_bundle(source))
    data = bytearray((source / "demo-1.0.0.zip").read_bytes())
    for at, patch in damage:
        at %= len(data)
        data[at : at + len(patch)] = patch
    target = tmp_path / "x.zip"
    target.write_bytes(bytes(data))
    read_or_reject(target)


@FUZZ
@given(
    names=st.lists(
        st.text(alphabet=st.sampled_from("ab./\\\n\x00:-"), min_size=1, max_size=12), max_size=5
    )
)
def test_zip_with_arbitrary_entry_names(tmp_path: Path, names: list[str]) -> None:
    source = tmp_path / "source"
    if not source.exists():
        source.mkdir()
        zip_bundle(make_bundle(source))
    target = tmp_path / "x.zip"
    target.write_bytes((source / "demo-1.0.0.zip").read_bytes())
    with zipfile.ZipFile(target, "a") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the test
        for name in names:
            info = zipfile.ZipInfo(name)
            archive.writestr(info, b"x")
    read_or_reject(target)


yaml_like = st.text(alphabet=st.sampled_from("ab:- \n[]{},&*!|>'\"#<?\t1."), max_size=300)


@FUZZ
@given(text=yaml_like)
def test_random_yaml_manifest(text: str) -> None:
    try:
        parse_manifest(text.encode(), "x")
    except BundleError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("x: driver.yaml: ")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "version",
                "category",
                "entrypoint",
                "requires",
                "python",
                "dependencies",
                "properties",
                "limits",
                "description",
                "other",
            ]
        ),
        json_values,
    )
)
def test_random_manifest_fields(fields: dict[str, object]) -> None:
    import json

    try:
        parse_manifest(json.dumps(fields).encode(), "x")  # JSON is YAML
    except BundleError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("x: driver.yaml: ")
