"""How a bundle problem becomes one operator-facing line.

Every rejection in ``sandbox`` reads ``<bundle>: <file>: <field path>: <problem;
fix>``, with the parts that do not apply left out. The parts may come from a
hostile bundle (file names in a zip, keys in YAML), so each is shown with
control characters escaped (``shown``): the line stays one line whatever the
input.
"""

from __future__ import annotations

from typing import NoReturn

from drivebay.protocol.errors import BundleError


def shown(text: str) -> str:
    """``text`` with each character that is not printable (ESC, BEL, CR, newline,
    C1 controls, bidi overrides ...) escaped as ``repr`` writes it (``\\x1b``).

    The one escaping of strings from bundles and drivers for a terminal or a
    log line: ``drivebayctl`` passes its human output through it too. Printable
    text, escaped text included, comes back unchanged, so escaping twice is
    harmless.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def quoted(text: str) -> str:
    """``text`` in single quotes, escaped as ``shown`` does, for values in messages."""
    return "'" + shown(text) + "'"


def reject(*parts: str) -> NoReturn:
    """Raise the ``BundleError`` whose one line joins ``parts`` with ``': '``.

    The last part is the problem and its fix; the ones before it locate it
    (bundle, file inside, field path). Empty parts are skipped.
    """
    raise BundleError(": ".join(shown(part) for part in parts if part))
