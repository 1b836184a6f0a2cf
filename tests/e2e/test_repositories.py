"""TUF repositories end to end: a repository written with ``drivebay repo``,
served by a real HTTP server on 127.0.0.1, read by a real drivebayd.

One daemon serves the whole module (starting one costs seconds): the flow
builds and signs ``demo`` with the ``drivebay`` console script, installs it
and upgrades it while a client keeps calling it; each attack works on its own
copy of a good repository, added under its own name, and installs ``victim``,
which must never reach the drivers dir.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from tuf.api.metadata import Metadata, MetaFile

from drivebay.author import cli
from drivebay.author.tuf_repo import Repository
from drivebay.client import Client
from drivebay.sandbox.atomic_files import write_whole
from tests.author.kit import ACCELERATORS
from tests.e2e.harness import BIN, Daemon, wait_for
from tests.sandbox.bundles import make_bundle, zip_bundle
from tests.wheels import wheel_of_installed

pytestmark = pytest.mark.slow


class Server:
    """``http_site.py`` serving ``root`` on an ephemeral port of 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.control = root.parent / f".{root.name}-cuts.json"
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("http_site.py")),
                str(root),
                str(self.control),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        port = self.process.stdout.readline().strip()
        self.process.stdout.close()
        assert port.isdigit(), f"http_site.py did not start (exit {self.process.poll()})"
        self.url = f"http://127.0.0.1:{port}"

    def truncate(self, counts: dict[str, int]) -> None:
        """Cut short the next ``count`` downloads of paths ending with each key."""
        write_whole(self.control, json.dumps(counts).encode())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def drivebay(*args: str) -> None:
    """Run a ``drivebay`` command in this process (the CLI's own entry point)."""
    assert cli.main([str(a) for a in args]) == 0, args


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Server]]:
    root = tmp_path_factory.mktemp("site")
    www = root / "www"
    www.mkdir()
    server = Server(www)
    yield root, server
    server.stop()


@pytest.fixture(scope="module")
def daemon(site: tuple[Path, Server], envs_dir: Path) -> Iterator[Daemon]:
    root, _ = site
    d = Daemon(root / "daemon", envs_dir, {"update_check_interval_s": 0.5})
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def good(site: tuple[Path, Server]) -> Path:
    """A published repository offering victim 1.0.0, to copy for each attack."""
    root, _ = site
    repo, keys = root / "good", root / "good-keys"
    drivebay("repo", "init", repo, "--keys", keys)
    staging = root / "staging-victim"
    drivebay("repo", "add", repo, zip_bundle(make_bundle(staging, "victim", "1.0.0")))
    drivebay("repo", "publish", repo)
    return repo


def ctl_json(daemon: Daemon, *args: str) -> Any:
    result = daemon.ctl(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def published_copy(site: tuple[Path, Server], good: Path, daemon: Daemon, name: str) -> Path:
    """A copy of the good repository served at /NAME and added to the daemon as NAME."""
    root, server = site
    repo = root / "www" / name
    shutil.copytree(good, repo)
    (repo / ".drivebay-repo.json").write_text(json.dumps({"keys": str(root / "good-keys")}))
    root_json = repo / "metadata" / "root.json"
    added = daemon.ctl("repo", "add", name, f"{server.url}/{name}", "--root", str(root_json))
    assert added.returncode == 0, added.stderr
    return repo


def refused(daemon: Daemon, repo: str, *words: str) -> str:
    """Install victim from ``repo``: refused with one line holding ``words``, nothing placed."""
    result = daemon.ctl("install", "victim", "--repo", repo)
    assert result.returncode != 0, result.stdout
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    for word in words:
        assert word in line, line
    assert not [p for p in daemon.drivers.iterdir() if "victim" in p.name], line
    return line


# -- the flow ---------------------------------------------------------------------------

DEMO_SOURCE = '''"""demo, as its vendor writes it: echo also says which version answered."""

VERSION = {version!r}


class DemoDriver:
    @classmethod
    async def health(cls) -> dict:
        return {{"ok": True}}

    def __init__(self, resource_id: str, properties: dict) -> None:
        self.resource_id = resource_id

    async def echo(self, text: str) -> dict:
        return {{"resource": self.resource_id, "text": text, "version": VERSION}}
'''


class Vendor:
    """A driver vendor with the installed ``drivebay`` console script: builds
    a bundle from its source against a local wheel dir (offline), signs it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wheels = root / "wheels"
        for name in ACCELERATORS:
            wheel_of_installed(self.wheels, name)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
        self.env |= {"PIP_CONFIG_FILE": os.devnull, "UV_CACHE_DIR": str(root / "uv-cache")}
        made = self.run("key", "new", "vendor", "--dir", root / "keys")
        self.key_id = made.split()[2]  # "key id HEX"
        self.key = root / "keys" / "vendor.key"

    def run(self, *args: str | Path) -> str:
        done = subprocess.run(
            [BIN / "drivebay", *map(str, args)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def release(self, version: str) -> Path:
        """``demo-VERSION.zip``: built by ``drivebay build``, signed by ``drivebay sign``."""
        source = make_bundle(
            self.root / "src" / version,
            "demo",
            version,
            src={"demo.py": DEMO_SOURCE.format(version=version)},
        )
        out = self.root / "dist"
        where = ("--no-index", "--find-links", self.wheels)
        built = self.run("build", source, "-o", out, *where)
        bundle = out / f"demo-{version}.zip"
        assert built.startswith(f"built {bundle} ("), built
        self.run("sign", bundle, "--key", self.key)
        return bundle


class Caller(threading.Thread):
    """Calls r1's echo with 1, 2, 3, ... one after another until told to halt;
    keeps each reply, and each failure as a line."""

    def __init__(self, socket: Path) -> None:
        super().__init__(daemon=True)
        self.socket = socket
        self.replies: list[tuple[int, Any]] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with Client(str(self.socket)) as client:
            for n in itertools.count(1):
                if self.halt.is_set():
                    return
                try:
                    self.replies.append((n, client.call("r1", "echo", {"text": str(n)})))
                except Exception as exc:  # a lost call is what the test looks for
                    self.failures.append(f"call {n}: {exc!r}")

    def served_by(self, version: str) -> int:
        return sum(reply["version"] == version for _, reply in self.replies)


@contextmanager
def trusting(daemon: Daemon, public_key: Path) -> Iterator[None]:
    """Run the daemon under ``trust.signatures: require`` with ``public_key``
    trusted; put its config back after."""
    original = daemon.config_path.read_text()
    config = yaml.safe_load(original)
    config["trust"] = {"signatures": "require", "keys": [str(public_key)]}
    daemon.config_path.write_text(yaml.safe_dump(config))
    assert daemon.ctl("reload").returncode == 0, daemon.log()
    try:
        yield
    finally:
        daemon.config_path.write_text(original)
        assert daemon.ctl("reload").returncode == 0, daemon.log()


def test_publish_add_install_run_then_upgrade(site, daemon):
    """The whole road: a vendor builds and signs demo 1.0.0, a publisher adds
    it to a repository and publishes; the daemon adds the repository, offers
    demo, installs it, runs r1 on it; 1.1.0 is built, signed, published,
    reported as an update and installed while a client keeps calling r1:
    every call is answered, in order, the last ones by 1.1.0."""
    root, server = site
    repo, keys = root / "www" / "main", root / "main-keys"
    vendor = Vendor(root / "vendor")
    run = subprocess.run  # the installed console script, as a publisher runs it
    for args in (
        ["repo", "init", repo, "--keys", keys],
        ["repo", "add", repo, vendor.release("1.0.0")],
        ["repo", "publish", repo],
    ):
        done = run([BIN / "drivebay", *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert not list(repo.rglob("*.key")), "no private key in the served tree"

    with trusting(daemon, vendor.key.with_suffix(".pub")):  # only signed bundles run
        root_json = repo / "metadata" / "root.json"
        added = daemon.ctl("repo", "add", "main", f"{server.url}/main", "--root", str(root_json))
        assert added.returncode == 0, added.stderr
        wrong = daemon.ctl(
            "repo", "add", "wrong", f"{server.url}/nowhere", "--root", str(root_json)
        )
        assert wrong.returncode == 1
        assert wrong.stderr.startswith("drivebayctl: repository wrong: cannot download from it")
        assert wrong.stderr.strip().endswith("; not added"), wrong.stderr
        listed = ctl_json(daemon, "repo", "list")
        assert [(r["name"], r["kept"]) for r in listed] == [("main", True)]

        offered = [r for r in ctl_json(daemon, "avail") if r["name"] == "demo"]
        assert [(r["version"], r["source"], r["installed"]) for r in offered] == [
            ("1.0.0", "main", False)
        ]

        installed = ctl_json(daemon, "install", "demo")
        assert (installed["version"], installed["state"]) == ("1.0.0", "RUNNING")
        assert ctl_json(daemon, "describe", "demo")["signed_by"] == vendor.key_id
        assert daemon.status()["demo"]["state"] == "RUNNING"
        added = daemon.ctl("resource", "add", "r1", "--driver", "demo")
        assert added.returncode == 0, added.stderr

        drivebay("repo", "add", repo, vendor.release("1.1.0"))
        drivebay("repo", "publish", repo)
        row = wait_for(
            lambda: (r := daemon.status()["demo"]).get("update_available") == "1.1.0" and r,
            what="the update check reporting 1.1.0",
        )
        assert row["version"] == "1.0.0"
        assert ctl_json(daemon, "describe", "demo")["update_available"] == "1.1.0"
        assert "update available: demo 1.1.0 (repository main)" in daemon.log()
        here = [r for r in ctl_json(daemon, "avail") if r["source"] == "drivers-dir"]
        assert [(r["version"], r["update_available"]) for r in here] == [("1.0.0", True)]

        again = ctl_json(daemon, "install", "demo==1.0.0")  # in the drivers dir: nothing fetched
        assert (again["file"], again["state"]) == (
            str(daemon.drivers / "demo-1.0.0.zip"),
            "RUNNING",
        )

        caller = Caller(daemon.socket)
        caller.start()
        try:
            wait_for(lambda: caller.served_by("1.0.0") >= 5, what="r1 answering on 1.0.0")
            before = len(caller.replies)
            upgraded = ctl_json(daemon, "install", "demo")
            during = len(caller.replies) - before
            assert (upgraded["version"], upgraded["state"]) == ("1.1.0", "RUNNING")
            wait_for(
                lambda: [r["version"] for r in ctl_json(daemon, "resources")] == ["1.1.0"],
                what="r1 handed over to 1.1.0",
            )
            wait_for(lambda: caller.served_by("1.1.0") >= 20, what="r1 answering on 1.1.0")
        finally:
            caller.halt.set()
            caller.join(timeout=30)
        assert not caller.is_alive()
        assert caller.failures == []
        numbers = [n for n, _ in caller.replies]
        assert numbers == list(range(1, len(numbers) + 1))
        assert [reply["text"] for _, reply in caller.replies] == [str(n) for n in numbers]
        assert {reply["resource"] for _, reply in caller.replies} == {"r1"}
        versions = [reply["version"] for _, reply in caller.replies]
        assert versions == sorted(versions), "an answer from 1.0.0 after one from 1.1.0"
        assert versions[0] == "1.0.0" and versions[-20:] == ["1.1.0"] * 20
        assert during > 0, "no call was answered while the install ran"
        print(f"{len(numbers)} calls, {during} answered during the install, none lost")
        assert not daemon.status()["demo"].get("update_available")
        assert ctl_json(daemon, "describe", "demo")["signed_by"] == vendor.key_id


def test_auto_update_installs_what_the_check_finds(site, daemon):
    root, _ = site
    config = yaml.safe_load(daemon.config_path.read_text())
    config["drivers"] = {"demo": {"auto_update": True}}
    daemon.config_path.write_text(yaml.safe_dump(config))
    assert daemon.ctl("reload").returncode == 0
    drivebay(
        "repo", "add", root / "www" / "main", zip_bundle(make_bundle(root / "s2", "demo", "1.2.0"))
    )
    drivebay("repo", "publish", root / "www" / "main")
    wait_for(
        lambda: [r["version"] for r in ctl_json(daemon, "resources")] == ["1.2.0"],
        what="demo updated to 1.2.0 by itself",
    )
    assert (daemon.drivers / "demo-1.2.0.zip").is_file()


# -- attacks: each refused with one line, nothing placed --------------------------------


def test_a_tampered_target_is_refused(site, good, daemon):
    repo = published_copy(site, good, daemon, "tampered")
    (stored,) = (repo / "targets" / "victim").iterdir()
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    refused(daemon, "tampered", "does not match its signed metadata")


def test_a_truncated_download_is_refused(site, good, daemon):
    published_copy(site, good, daemon, "cut")
    site[1].truncate({"victim-1.0.0.zip": 1000})
    try:
        refused(daemon, "cut", "the transfer broke off (a truncated download), 3 times")
    finally:
        site[1].truncate({})


def test_a_broken_transfer_is_tried_again(site, good, daemon):
    repo = published_copy(site, good, daemon, "flaky")
    drivebay("repo", "add", repo, zip_bundle(make_bundle(site[0] / "s3", "flaky", "1.0.0")))
    drivebay("repo", "publish", repo)
    site[1].truncate({"flaky-1.0.0.zip": 2})
    try:
        installed = ctl_json(daemon, "install", "flaky")
    finally:
        site[1].truncate({})
    assert installed["state"] == "RUNNING"


def test_a_rolled_back_snapshot_is_refused(site, good, daemon):
    repo = published_copy(site, good, daemon, "rollback")
    drivebay("repo", "publish", repo)  # snapshot 3, which the daemon then sees
    assert ctl_json(daemon, "avail")
    keys = Repository.open(repo)
    timestamp = keys.load("timestamp")
    timestamp.signed.snapshot_meta = MetaFile(version=2)  # validly signed, but older
    keys.write("timestamp", timestamp, [keys.signer("timestamp")])
    refused(daemon, "rollback", "rollback", "snapshot")


def test_an_expired_timestamp_is_refused(site, good, daemon):
    repo = published_copy(site, good, daemon, "frozen")
    drivebay("repo", "timestamp", repo, "--expires", "1s")
    expires = Metadata.from_file(str(repo / "metadata" / "timestamp.json")).signed.expires
    wait_for(lambda: datetime.now(UTC) > expires, what="the timestamp expiring")
    refused(daemon, "frozen", "expired", "drivebay repo timestamp")


def test_mixed_metadata_versions_are_refused(site, good, daemon):
    repo = published_copy(site, good, daemon, "mixed")
    drivebay("repo", "add", repo, zip_bundle(make_bundle(repo.parent / "mx", "other", "1.0.0")))
    drivebay("repo", "publish", repo)
    metadata = repo / "metadata"
    # The new snapshot names targets 3; serve targets 2's signed content under that name.
    shutil.copy(metadata / "2.targets.json", metadata / "3.targets.json")
    refused(daemon, "mixed", "mix-and-match")


# -- mirrors ------------------------------------------------------------------------------


def test_a_mirror_installs_with_the_origin_stopped(site, good, daemon):
    root, _ = site
    origin_dir = root / "origin"
    shutil.copytree(good, origin_dir / "up")
    origin = Server(origin_dir)
    try:
        drivebay(
            "repo",
            "mirror",
            f"{origin.url}/up",
            root / "mirror",
            "--root",
            good / "metadata/root.json",
        )
    finally:
        origin.stop()
    assert not list((root / "mirror").rglob("*.key"))
    root_json = str(good / "metadata" / "root.json")
    added = daemon.ctl("repo", "add", "mirror", str(root / "mirror"), "--root", root_json)
    assert added.returncode == 0, added.stderr
    installed = ctl_json(daemon, "install", "victim", "--repo", "mirror")
    assert (installed["version"], installed["state"]) == ("1.0.0", "RUNNING")


def test_a_resigned_mirror_outlives_the_upstream_timestamp(site, daemon):
    root, server = site
    upstream, keys = root / "www" / "short", root / "short-keys"
    drivebay("repo", "init", upstream, "--keys", keys)
    bundle = zip_bundle(make_bundle(root / "staging-far", "far", "1.0.0"))
    drivebay("repo", "add", upstream, bundle)
    drivebay("repo", "publish", upstream, "--expires", "timestamp=2s")
    root_json = upstream / "metadata" / "root.json"
    site_dir, site_keys = root / "site", root / "site-keys"
    drivebay(
        "repo",
        "mirror",
        f"{server.url}/short",
        site_dir,
        "--root",
        root_json,
        "--resign",
        site_keys,
    )

    expires = Metadata.from_file(str(upstream / "metadata" / "timestamp.json")).signed.expires
    wait_for(lambda: datetime.now(UTC) > expires, what="the upstream timestamp expiring")
    stale = cli.main(
        ["repo", "mirror", f"{server.url}/short", str(root / "plain"), "--root", str(root_json)]
    )
    assert stale == 1  # a plain mirror cannot outlive it

    drivebay("repo", "timestamp", site_dir)  # the site renews its own
    site_root = str(site_dir / "metadata" / "root.json")
    added = daemon.ctl("repo", "add", "site", str(site_dir), "--root", site_root)
    assert added.returncode == 0, added.stderr
    installed = ctl_json(daemon, "install", "far")
    assert (installed["repo"], installed["state"]) == ("site", "RUNNING")


# -- the signature policy on an install -------------------------------------------------


def test_the_trust_policy_judges_an_install_before_anything_is_placed(site, good, daemon):
    """Under ``trust.signatures: require`` a repository's unsigned bundle is
    refused with the policy's line and never placed; a bundle signed by a
    trusted key installs and runs. The policy is put back to ``off`` after."""
    root, _ = site
    keys = root / "vendor-keys"
    drivebay("key", "new", "vendor", "--dir", keys)
    repo = published_copy(site, good, daemon, "signed")
    signed = zip_bundle(make_bundle(root / "staging-trusted", "trusted", "1.0.0"))
    drivebay("sign", signed, "--key", keys / "vendor.key")
    plain = zip_bundle(make_bundle(root / "staging-plain", "plain", "1.0.0"))
    drivebay("repo", "add", repo, signed, plain)
    drivebay("repo", "publish", repo)
    original = daemon.config_path.read_text()
    config = yaml.safe_load(original)
    config["trust"] = {"signatures": "require", "keys": [str(keys / "vendor.pub")]}
    daemon.config_path.write_text(yaml.safe_dump(config))
    assert daemon.ctl("reload").returncode == 0, daemon.log()
    try:
        result = daemon.ctl("install", "plain", "--repo", "signed")
        assert result.returncode != 0, result.stdout
        assert result.stderr.strip() == (
            "drivebayctl: plain-1.0.0.zip: not signed; sign it (drivebay sign plain-1.0.0.zip "
            "--key KEY), or set trust.signatures to warn or off; nothing was installed"
        )
        assert not [path for path in daemon.drivers.iterdir() if "plain" in path.name]
        installed = ctl_json(daemon, "install", "trusted", "--repo", "signed")
        assert installed["state"] == "RUNNING"
    finally:
        daemon.config_path.write_text(original)
        assert daemon.ctl("reload").returncode == 0, daemon.log()


# -- last: a restart (the module's daemon ends here) -------------------------------------


def test_kept_repositories_survive_a_restart(daemon):
    before = ctl_json(daemon, "repo", "list")
    assert "main" in [r["name"] for r in before]
    daemon.stop()
    daemon.start()
    try:
        assert ctl_json(daemon, "repo", "list") == before
        gone = ctl_json(daemon, "repo", "rm", "mirror")
        assert gone["message"] == "removed"
        assert "mirror" not in [r["name"] for r in ctl_json(daemon, "repo", "list")]
        assert not (daemon.state / "repos" / "mirror").exists()
        again = daemon.ctl("repo", "rm", "mirror")
        assert (again.returncode, again.stderr.strip()) == (
            1,
            "drivebayctl: no repository mirror; see drivebayctl repo list",
        )
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log()
