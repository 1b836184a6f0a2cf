"""drivebayctl's argparse-free fast path for `status` must parse as argparse does."""

from __future__ import annotations

import pytest

from drivebay.kernel.drivebayctl import build_parser, parse, parse_plain_status


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json"],
        ["-s", "/x.sock", "status", "a", "b@1.0.0"],
        ["-c", "cfg.yaml", "-s", "/y", "status", "--json", "a"],
        ["--socket", "/z", "status", "a", "--json"],
    ],
)
def test_fast_status_agrees_with_argparse(argv):
    fast = parse_plain_status(argv)
    assert fast is not None
    full = build_parser().parse_args(argv)
    for field in ("command", "json", "names", "socket", "config"):
        assert getattr(fast, field) == getattr(full, field), field


@pytest.mark.parametrize("argv", [["status", "-h"], ["status", "--jsn"], ["stop", "a"], []])
def test_anything_else_goes_through_argparse(argv):
    assert parse_plain_status(argv) is None


def test_parse_takes_the_fast_path_and_falls_back():
    assert parse(["status", "--json"]).json is True
    assert parse(["stop", "all"]).names == ["all"]
