"""``drivebay repo`` on real files and keys, read back by the daemon's TUF client
(``kernel.repos.client``) from the directory: no daemon, no network."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from drivebay.author import cli
from drivebay.author.tuf_repo import new_key
from drivebay.kernel.repos.client import Deadline, Source, list_offers
from tests.sandbox.bundles import make_bundle, zip_bundle


def drivebay(*args: object) -> int:
    return cli.main([str(a) for a in args])


def offers(repo: Path, root: Path, cache: Path) -> dict[str, str]:
    source = Source("r", str(repo), root.read_bytes())
    return {o.name: o.version for o in list_offers(source, cache, Deadline(10))}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    assert drivebay("repo", "init", tmp_path / "repo", "--keys", tmp_path / "keys") == 0
    return tmp_path / "repo"


def test_keys_stay_private_and_outside_the_served_tree(tmp_path, repo, capsys):
    keys = tmp_path / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in keys.glob("*.key")} == {0o600}
    assert not list(repo.rglob("*.key"))
    capsys.readouterr()
    assert drivebay("repo", "init", tmp_path / "other", "--keys", tmp_path / "other" / "k") == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "must not be inside the served tree" in line


def test_a_target_carries_the_bundle_facts(tmp_path, repo):
    bundle = zip_bundle(make_bundle(tmp_path / "src", "demo", "2.0.0"))
    assert drivebay("repo", "add", repo, bundle) == 0
    assert offers(repo, repo / "metadata/root.json", tmp_path / "c1") == {}  # not published
    assert drivebay("repo", "publish", repo) == 0
    assert offers(repo, repo / "metadata/root.json", tmp_path / "c2") == {"demo": "2.0.0"}
    targets = json.loads(max((repo / "metadata").glob("*.targets.json")).read_text())
    custom = targets["signed"]["targets"]["demo/demo-2.0.0.zip"]["custom"]["drivebay"]
    assert custom == {"name": "demo", "version": "2.0.0", "category": "storage", "python": None}


def test_a_vendor_adds_only_the_names_delegated_to_it(tmp_path, repo, capsys):
    vendor = new_key(tmp_path / "acme.key")
    assert vendor.public_key.keyid
    delegate = ("repo", "delegate", repo, "acme", "--key", tmp_path / "acme.pub")
    assert drivebay(*delegate, "--drivers", "acme-*") == 0
    src = tmp_path / "src"
    mine = zip_bundle(make_bundle(src, "acme-nfs", "1.0.0"))
    theirs = zip_bundle(make_bundle(src, "demo", "1.0.0"))
    as_acme = ("--role", "acme", "--key", tmp_path / "acme.key")
    assert drivebay("repo", "add", repo, mine, *as_acme) == 0
    capsys.readouterr()
    assert drivebay("repo", "add", repo, theirs, *as_acme) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "demo is not among the names delegated to acme" in line
    new_key(tmp_path / "mallory.key")
    mallory = ("--role", "acme", "--key", tmp_path / "mallory.key")
    assert drivebay("repo", "add", repo, mine, *mallory) == 1
    assert "not the key delegated to acme" in capsys.readouterr().err
    assert drivebay("repo", "publish", repo) == 0
    assert offers(repo, repo / "metadata/1.root.json", tmp_path / "c") == {"acme-nfs": "1.0.0"}


def test_a_client_follows_key_rotations_from_its_first_root(tmp_path, repo):
    bundle = zip_bundle(make_bundle(tmp_path / "src", "demo", "1.0.0"))
    assert drivebay("repo", "add", repo, bundle) == 0
    assert drivebay("repo", "publish", repo) == 0
    first, cache = repo / "metadata" / "1.root.json", tmp_path / "cache"
    assert offers(repo, first, cache) == {"demo": "1.0.0"}
    for role in ("timestamp", "snapshot", "targets", "root"):
        assert drivebay("repo", "rotate", repo, role) == 0
    assert len(list((tmp_path / "keys" / "retired").glob("*.key"))) == 4
    assert offers(repo, first, cache) == {"demo": "1.0.0"}  # a client that saw root 1
    assert offers(repo, first, tmp_path / "fresh") == {"demo": "1.0.0"}  # and a new one


def test_a_bad_duration_is_one_line(tmp_path, capsys):
    assert (
        drivebay("repo", "init", tmp_path / "r", "--keys", tmp_path / "k", "--expires", "root=soon")
        == 1
    )
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "drivebay: 'soon' is not a duration; write e.g. 30s, 10m, 12h, 7d, 1y"


def test_a_mirror_keeps_vendor_roles_and_a_resigned_one_its_own_root(tmp_path, repo):
    new_key(tmp_path / "acme.key")
    delegate = ("repo", "delegate", repo, "acme", "--key", tmp_path / "acme.pub")
    assert drivebay(*delegate, "--drivers", "acme-*") == 0
    src = tmp_path / "src"
    as_acme = ("--role", "acme", "--key", tmp_path / "acme.key")
    assert (
        drivebay("repo", "add", repo, zip_bundle(make_bundle(src, "acme-nfs", "1.0.0")), *as_acme)
        == 0
    )
    assert drivebay("repo", "add", repo, zip_bundle(make_bundle(src, "demo", "1.0.0"))) == 0
    assert drivebay("repo", "publish", repo) == 0
    upstream_root = repo / "metadata" / "root.json"
    both = {"acme-nfs": "1.0.0", "demo": "1.0.0"}

    mirror = tmp_path / "mirror"
    assert drivebay("repo", "mirror", repo, mirror, "--root", upstream_root) == 0
    assert (mirror / "metadata" / "1.acme.json").is_file()
    assert offers(mirror, upstream_root, tmp_path / "c1") == both

    site = tmp_path / "site"
    resign = ("--resign", tmp_path / "site-keys")
    assert drivebay("repo", "mirror", repo, site, "--root", upstream_root, *resign) == 0
    assert offers(site, site / "metadata" / "root.json", tmp_path / "c2") == both
    stored = sorted(p.name.split(".", 1)[1] for p in (site / "targets").rglob("*.zip"))
    assert stored == ["acme-nfs-1.0.0.zip", "demo-1.0.0.zip"]
