"""What a daemon believes of a repository's targets metadata (``kernel.repos.client``)
and which offer ``install`` takes (``kernel.repos.service.choose``): pure rules."""

from __future__ import annotations

import pytest
from tuf.api.metadata import TargetFile, Targets

from drivebay.kernel.config import Config
from drivebay.kernel.repos.client import _offers
from drivebay.kernel.repos.offers import Offer
from drivebay.kernel.repos.service import Repositories, choose
from drivebay.protocol.errors import RequestError
from tests.helpers import run


def target(path: str, name: str, version: str) -> TargetFile:
    custom = {"drivebay": {"name": name, "version": version, "category": "storage"}}
    return TargetFile(10, {"sha256": "00" * 32}, path, {"custom": custom})


def test_only_a_driver_name_and_version_that_agree_with_the_path_are_offered():
    targets = Targets(
        targets={
            path: target(path, name, version)
            for path, name, version in [
                ("demo/demo-1.0.0.zip", "demo", "1.0.0"),
                ("demo/demo-2.0.0.zip", "demo", "9.9.9"),  # the custom fields lie
                ("../x/../x-1.0.zip", "../x", "1.0"),  # a name that is a path
                ("y/y-1..zip", "y", "1."),  # not a version
                ("z/z-1.0/..zip", "z", "1.0/."),
            ]
        }
    )
    found = _offers("r", targets, lambda _: True)
    assert [(o.name, o.version) for o in found] == [("demo", "1.0.0")]
    assert _offers("r", targets, lambda path: not path.startswith("demo/")) == []


def offer(repo: str, version: str) -> Offer:
    return Offer(repo, "demo", version, "storage", None, f"demo/demo-{version}.zip", 1)


def test_install_takes_the_highest_version_or_the_one_named():
    offers = [offer("a", "1.2.0"), offer("b", "1.10.0"), offer("a", "1.10.0")]
    assert choose(offers, "demo", None, None) == offers[1]  # a tie: the first listed
    assert choose(offers, "demo", None, "a") == offers[2]
    assert choose(offers, "demo", "1.2", None) == offers[0]
    assert choose(offers, "demo", "3.0", None) is None
    assert choose(offers, "other", None, None) is None


def test_without_repositories_nothing_is_read(tmp_path):
    config = Config(state_dir=str(tmp_path))
    assert run(Repositories().offers(config)) == ([], {})
    assert not (tmp_path / "repos").exists()
    with pytest.raises(RequestError, match=r"^no repository acme; see drivebayctl repo list$"):
        run(Repositories().offers(config, "acme"))
