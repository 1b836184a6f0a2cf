"""Message catalogs: the language chain, per-key fallback, bad files skipped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from drivebay.kernel.resources.catalog import (
    MAX_MESSAGES_BYTES,
    language_from_environment,
    load_catalog,
    message_files,
)


def bundle(tmp_path: Path, **files: str | bytes) -> Path:
    """A bundle dir whose ``resources/`` holds ``files`` (``messages_de`` is
    written as ``messages.de.yaml``)."""
    resources = tmp_path / "nfs-storage" / "resources"
    resources.mkdir(parents=True)
    for stem, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (resources / f"{stem.replace('_', '.', 1)}.yaml").write_bytes(data)
    return resources.parent


@pytest.fixture
def three_languages(tmp_path: Path) -> Path:
    return bundle(
        tmp_path,
        messages="host.label: Host\nhost.help: NFS server\nsize.label: Size\n",
        messages_de="host.label: Rechner\nhost.help: NFS-Server\n",
        messages_de_AT="host.label: Hostrechner\n",
    )


@pytest.mark.parametrize(
    ("lang", "files"),
    [
        ("de_DE.UTF-8", ["messages.de_DE.yaml", "messages.de.yaml", "messages.yaml"]),
        ("de_AT.UTF-8@euro", ["messages.de_AT.yaml", "messages.de.yaml", "messages.yaml"]),
        ("de-CH", ["messages.de_CH.yaml", "messages.de.yaml", "messages.yaml"]),
        ("fr", ["messages.fr.yaml", "messages.yaml"]),
        ("C", ["messages.yaml"]),
        ("C.UTF-8", ["messages.yaml"]),
        ("POSIX", ["messages.yaml"]),
        ("", ["messages.yaml"]),
        ("../../etc/passwd", ["messages.yaml"]),
        ("de_DE/x", ["messages.yaml"]),
    ],
)
def test_message_files_for_a_locale(lang: str, files: list[str]) -> None:
    assert message_files(lang) == files


@pytest.mark.parametrize(
    ("environ", "lang"),
    [
        ({"LANG": "de_DE.UTF-8"}, "de_DE.UTF-8"),
        ({"LANG": "de_DE.UTF-8", "LC_MESSAGES": "fr_FR"}, "fr_FR"),
        ({"LANG": "de_DE.UTF-8", "LC_MESSAGES": "fr_FR", "LC_ALL": "it_IT"}, "it_IT"),
        ({"LANG": "de_DE.UTF-8", "LC_ALL": ""}, "de_DE.UTF-8"),
        ({}, ""),
    ],
)
def test_the_language_comes_from_lc_all_lc_messages_lang(
    environ: dict[str, str], lang: str
) -> None:
    assert language_from_environment(environ) == lang


def test_each_key_falls_back_along_the_chain(three_languages: Path) -> None:
    catalog = load_catalog(three_languages, "de_AT.UTF-8")
    assert catalog.text("host.label") == "Hostrechner"  # messages.de_AT.yaml
    assert catalog.text("host.help") == "NFS-Server"  # messages.de.yaml
    assert catalog.text("size.label") == "Size"  # messages.yaml
    assert catalog.text("thin.label") == "thin.label"  # nowhere: the key itself
    assert catalog.text(None) == ""


def test_a_missing_territory_file_is_skipped(three_languages: Path) -> None:
    catalog = load_catalog(three_languages, "de_DE.UTF-8")
    assert catalog.text("host.label") == "Rechner"


def test_an_unknown_language_shows_the_default_file(three_languages: Path) -> None:
    assert load_catalog(three_languages, "ja_JP.UTF-8").text("host.label") == "Host"


def test_the_language_is_read_from_the_environment(
    three_languages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    assert load_catalog(three_languages).text("host.label") == "Rechner"
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    assert load_catalog(three_languages).text("host.label") == "Host"


def test_a_bundle_without_message_files_shows_keys(tmp_path: Path) -> None:
    catalog = load_catalog(tmp_path, "de_DE")
    assert catalog.text("host.label") == "host.label"


@pytest.mark.parametrize(
    ("content", "warning"),
    [
        (
            "host.label: [unclosed\n",
            "nfs-storage: resources/messages.de.yaml: line 1: not valid YAML",
        ),
        (b"host.label: \xff\n", "nfs-storage: resources/messages.de.yaml: not UTF-8 text"),
        (
            "a: &x Host\nb: *x\n",
            "nfs-storage: resources/messages.de.yaml: line 1: YAML anchors and aliases",
        ),
        (
            "- a\n- b\n",
            "nfs-storage: resources/messages.de.yaml: not a mapping of key: text; "
            "showing message keys instead",
        ),
        ("x" * (MAX_MESSAGES_BYTES + 1), "resources/messages.de.yaml: larger than 1 MiB"),
    ],
)
def test_a_bad_file_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | bytes, warning: str
) -> None:
    bundle_dir = bundle(tmp_path, messages="host.label: Host\n", messages_de=content)
    with caplog.at_level(logging.WARNING, logger="drivebay.messages"):
        catalog = load_catalog(bundle_dir, "de_DE.UTF-8")
    assert catalog.text("host.label") == "Host"
    assert catalog.text("host.help") == "host.help"
    [record] = caplog.records
    assert warning in record.getMessage()


def test_a_bad_default_file_leaves_the_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle_dir = bundle(tmp_path, messages="{{{")
    with caplog.at_level(logging.WARNING, logger="drivebay.messages"):
        assert load_catalog(bundle_dir, "").text("host.label") == "host.label"
    assert len(caplog.records) == 1


def test_entries_that_are_not_text_are_skipped_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle_dir = bundle(tmp_path, messages="host.label: Host\ncount: 5\n7: seven\nnested: {a: b}\n")
    with caplog.at_level(logging.WARNING, logger="drivebay.messages"):
        catalog = load_catalog(bundle_dir, "")
    assert catalog.text("host.label") == "Host"
    assert catalog.text("count") == "count"
    [record] = caplog.records
    assert record.getMessage() == (
        "nfs-storage: resources/messages.yaml: not text, skipped: 'count', 'nested', 7; "
        "quote each message"
    )


def test_an_empty_file_is_no_problem(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle_dir = bundle(tmp_path, messages="# no messages yet\n")
    assert load_catalog(bundle_dir, "").text("host.label") == "host.label"
    assert not caplog.records


def test_an_unreadable_file_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle_dir = bundle(tmp_path, messages="host.label: Host\n")
    (bundle_dir / "resources" / "messages.de.yaml").mkdir()
    with caplog.at_level(logging.WARNING, logger="drivebay.messages"):
        assert load_catalog(bundle_dir, "de").text("host.label") == "Host"
    [record] = caplog.records
    assert "resources/messages.de.yaml: cannot be read (Is a directory)" in record.getMessage()


def test_the_example_bundles_have_a_text_for_every_label() -> None:
    from drivebay.sandbox.manifest import parse_manifest

    drivers = Path(__file__).parents[2] / "drivers"
    for bundle_dir in sorted(path.parent for path in drivers.glob("*/driver.yaml")):
        manifest = parse_manifest((bundle_dir / "driver.yaml").read_bytes(), bundle_dir.name)
        catalog = load_catalog(bundle_dir, "")
        for spec in manifest.properties:
            for key in (spec.label, spec.description):
                if key is not None:
                    assert catalog.text(key) != key, f"{bundle_dir.name}: no text for {key}"
