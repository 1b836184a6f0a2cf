"""The line a YAML error names is the line where the problem is."""

from __future__ import annotations

import pytest

from drivebay.protocol.errors import BundleError
from drivebay.sandbox.safe_yaml import load_yaml


def refusal(text: str) -> str:
    with pytest.raises(BundleError) as caught:
        load_yaml(text.encode(), "b", "driver.yaml")
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "line", "noticed"),
    [
        # An unclosed flow mapping or sequence: the line that opens it, not the
        # line after it (where the parser noticed).
        ("name: x\nlimits: {memory_mb: 512\nversion: 1\n", 2, "but got ':' at line 3"),
        ("name: x\nlimits: {memory_mb: 512\n", 2, "but got '<stream end>' at line 3"),
        ("name: x\nlimits: {memory_mb: 512\n\n# note\nversion: 1\n", 2, "at line 5"),
        ("name: x\nrequires: [a, b\nversion: 1\n", 2, "but got ':' at line 3"),
        ("properties:\n  - {key: host, type: string\n  - {key: b}\n", 2, "but got '{' at line 3"),
        # An unclosed quote: the line where it opens.
        ("name: 'x\nversion: 1\n", 1, "unexpected end of stream at line 3"),
    ],
)
def test_an_unclosed_flow_collection_or_quote_names_the_line_that_opens_it(text, line, noticed):
    message = refusal(text)
    assert message.startswith(f"b: driver.yaml: line {line}: not valid YAML ("), message
    assert noticed in message, message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("name: x\nlimits: {a: 1 b: 2}\nversion: 1\n", 2),  # noticed on its own line
        ("name: x\n  version: 1\n", 2),
        ("name: x\n\tversion: 1\n", 2),
    ],
)
def test_other_errors_keep_the_line_where_they_are_noticed(text, line):
    message = refusal(text)
    assert message.startswith(f"b: driver.yaml: line {line}: not valid YAML ("), message
    assert " at line " not in message
