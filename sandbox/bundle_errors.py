"""How a bundle problem becomes one operator-facing line.

Every rejection in ``sandbox`` reads ``<bundle>: <file>: <field path>: <problem;
fix>``, with the parts that do not apply left out. The parts may come from a
hostile bundle (file names in a zip, keys in YAML), so each is shown with
control characters escaped: the line stays one line whatever the input.
"""

from __future__ import annotations

from typing import NoReturn

from protocol.errors import BundleError


def shown(text: str) -> str:
    """``text`` as it is when printable, else escaped like ``repr`` (unquoted)."""
    if text.isprintable():
        return text
    return repr(text)[1:-1]


def quoted(text: str) -> str:
    """``text`` in single quotes, escaped as ``shown`` does, for values in messages."""
    return "'" + shown(text) + "'"


def reject(*parts: str) -> NoReturn:
    """Raise the ``BundleError`` whose one line joins ``parts`` with ``': '``.

    The last part is the problem and its fix; the ones before it locate it
    (bundle, file inside, field path). Empty parts are skipped.
    """
    raise BundleError(": ".join(shown(part) for part in parts if part))
