"""Labels and descriptions of a driver's properties, in the operator's language.

A manifest names its properties' labels and descriptions by message key
(``label: host.label``); the texts live in the bundle's
``resources/messages.yaml`` and ``resources/messages.<lang>.yaml``, each a flat
mapping ``key: text``. ``describe`` and the CLI show ``Catalog.text(key)``.

The language comes from ``LC_ALL``, ``LC_MESSAGES`` or ``LANG`` (the first one
set, as POSIX orders them): ``de_DE.UTF-8`` reads ``messages.de_DE.yaml``,
``messages.de.yaml`` and ``messages.yaml``, and each key takes its text from
the first of them that has it, else shows the key itself. Message files are
help text: a bad one (not YAML, not a flat mapping, too large) is logged as
a warning and skipped; it never stops a driver from loading.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from drivebay.protocol.errors import BundleError
from drivebay.sandbox.safe_yaml import load_yaml

RESOURCES_DIR: Final = "resources"
DEFAULT_FILE: Final = "messages.yaml"
MAX_MESSAGES_BYTES: Final = 1 << 20
LANGUAGE_VARIABLES: Final = ("LC_ALL", "LC_MESSAGES", "LANG")

# The language becomes part of a file name: anything else than a plain
# language[_TERRITORY] tag is ignored, so "../x" can never name another file.
_LANGUAGE: Final = re.compile(
    r"(?P<language>[A-Za-z]{2,8})(?:[_-](?P<territory>[A-Za-z0-9]{2,8}))?"
)

log = logging.getLogger("drivebay.messages")


class Catalog:
    """The message texts of one bundle in one language."""

    __slots__ = ("_texts",)

    def __init__(self, texts: Mapping[str, str]) -> None:
        self._texts = dict(texts)

    def text(self, key: str | None) -> str:
        """The text of ``key``; the key itself when no file has it, ``""`` for None."""
        if key is None:
            return ""
        return self._texts.get(key, key)


def load_catalog(bundle_dir: Path, lang: str | None = None) -> Catalog:
    """The catalog of the bundle unpacked at ``bundle_dir``.

    ``lang`` is a locale name such as ``de_DE.UTF-8``; None reads it from the
    environment. Never raises for a bad or missing message file: it logs a
    warning and those keys fall back to the other files, then to themselves.
    """
    if lang is None:
        lang = language_from_environment(os.environ)
    texts: dict[str, str] = {}
    for name in reversed(message_files(lang)):  # the most specific file wins
        texts.update(_read_messages(bundle_dir, name))
    return Catalog(texts)


def language_from_environment(environ: Mapping[str, str]) -> str:
    """The locale name that decides the language of messages, ``""`` when unset."""
    for variable in LANGUAGE_VARIABLES:
        if value := environ.get(variable, ""):
            return value
    return ""


def message_files(lang: str) -> list[str]:
    """The message file names for locale ``lang``, the most specific first.

    ``de_DE.UTF-8@euro`` gives ``messages.de_DE.yaml``, ``messages.de.yaml``,
    ``messages.yaml``; ``C``, ``POSIX``, ``""`` and malformed names give the
    default file only.
    """
    tag = lang.partition(".")[0].partition("@")[0]
    match = _LANGUAGE.fullmatch(tag)
    if match is None or tag.upper() == "POSIX":
        return [DEFAULT_FILE]
    names = [f"messages.{match['language']}.yaml", DEFAULT_FILE]
    if match["territory"]:
        names.insert(0, f"messages.{match['language']}_{match['territory']}.yaml")
    return names


def _read_messages(bundle_dir: Path, name: str) -> dict[str, str]:
    """The texts in ``resources/<name>``; empty (with a warning if it exists
    but is unusable) when it cannot be used."""
    relative = f"{RESOURCES_DIR}/{name}"
    try:
        with (bundle_dir / RESOURCES_DIR / name).open("rb") as handle:
            data = handle.read(MAX_MESSAGES_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        return _skip(bundle_dir, relative, f"cannot be read ({exc.strerror or exc})")
    if len(data) > MAX_MESSAGES_BYTES:
        return _skip(bundle_dir, relative, "larger than 1 MiB")
    try:
        raw = load_yaml(data, bundle_dir.name, relative)
    except BundleError as exc:
        log.warning("%s; showing message keys instead", exc)
        return {}
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        return _skip(bundle_dir, relative, "not a mapping of key: text")
    texts = {
        key: text for key, text in raw.items() if isinstance(key, str) and isinstance(text, str)
    }
    if len(texts) < len(raw):
        bad = ", ".join(sorted(repr(key) for key in raw if key not in texts)[:5])
        log.warning(
            "%s: %s: not text, skipped: %s; quote each message", bundle_dir.name, relative, bad
        )
    return texts


def _skip(bundle_dir: Path, relative: str, problem: str) -> dict[str, str]:
    log.warning("%s: %s: %s; showing message keys instead", bundle_dir.name, relative, problem)
    return {}
