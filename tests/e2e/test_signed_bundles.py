"""Signed bundles against a real daemon: under ``require`` a bundle signed
through a trusted authority runs and a tampered or unsigned one is INVALID
with its one line; a reload to ``warn`` runs them and status, avail and
describe say so; a reload back to ``require`` stops them again; a reload
naming a key file that cannot be read is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.author.run_cli import ok
from tests.e2e.harness import Daemon, wait_for
from tests.sandbox.bundles import make_bundle, zip_bundle

pytestmark = pytest.mark.slow


def set_trust(daemon: Daemon, trust: dict[str, Any]) -> None:
    config = yaml.safe_load(daemon.config_path.read_text())
    config["trust"] = trust
    daemon.config_path.write_text(yaml.safe_dump(config))


def test_require_then_warn_then_require(daemon_factory: Any, tmp_path: Path) -> None:
    keys, staging = tmp_path / "keys", tmp_path / "staging"
    ok("key", "new", "acme", "--dir", keys)
    ok("key", "new", "platform", "--dir", keys)
    ok(
        "key", "certify", keys / "acme.pub", "--authority", keys / "platform.key",
        "--drivers", "acme-*", "-o", keys / "acme.cert",
    )  # fmt: skip
    disk = zip_bundle(make_bundle(staging, "acme-disk"))
    tampered = make_bundle(staging, "acme-net")
    for bundle in (disk, tampered):
        ok("sign", bundle, "--key", keys / "acme.key", "--cert", keys / "acme.cert")
    with (tampered / "src/acme_net.py").open("a") as source:
        source.write("# one more line\n")
    unsigned = make_bundle(staging, "acme-cpu")

    require = {"signatures": "require", "authorities": [str(keys / "platform.pub")]}
    daemon: Daemon = daemon_factory("d", {"trust": require})
    daemon.start()
    for bundle in (disk, tampered, unsigned):
        daemon.drop(bundle)
    daemon.wait_state("acme-disk", "RUNNING")
    net = daemon.wait_state("acme-net-1.0.0", "INVALID")
    assert net["message"] == (
        "acme-net-1.0.0: src/acme_net.py: changed since the bundle was signed; rebuild it "
        "from its source, or sign it again if the change is yours"
    )
    cpu = daemon.wait_state("acme-cpu-1.0.0", "INVALID")
    assert cpu["message"].startswith("acme-cpu-1.0.0: not signed; sign it (drivebay sign")
    described = json.loads(daemon.ctl("describe", "acme-disk", "--json").stdout)
    assert len(described["signed_by"]) == len(described["certified_by"]) == 64
    assert described["signature"].startswith(f"signed by key {described['signed_by']}, ")
    assert "certified for 'acme-*' by authority" in described["signature"]
    assert "(platform.pub)" in daemon.ctl("describe", "acme-disk").stdout

    set_trust(daemon, {**require, "signatures": "warn"})
    assert daemon.ctl("reload").returncode == 0, daemon.log()
    daemon.wait_state("acme-net", "RUNNING")
    daemon.wait_state("acme-cpu", "RUNNING")
    rows = daemon.status()
    assert rows["acme-net"]["signature_warning"] == "signature: src/acme_net.py changed"
    assert rows["acme-cpu"]["signature_warning"] == "unsigned"
    assert rows["acme-disk"]["signature_warning"] is None
    text = daemon.ctl("status").stdout
    assert any(
        line.startswith("acme-cpu@1.0.0") and "; unsigned" in line for line in text.split("\n")
    )
    avail = {row["name"]: row for row in json.loads(daemon.ctl("avail", "--json").stdout)}
    assert avail["acme-cpu"]["signature_warning"] == "unsigned"
    assert "[signature: src/acme_net.py changed]" in daemon.ctl("avail").stdout
    warned = daemon.ctl("describe", "acme-cpu").stdout
    assert "signature:    unsigned, runs under trust.signatures: warn" in warned

    set_trust(daemon, require)
    assert daemon.ctl("reload").returncode == 0
    daemon.wait_state("acme-cpu-1.0.0", "INVALID")
    wait_for(lambda: "acme-cpu" not in daemon.status(), what="acme-cpu stopped")
    assert daemon.status()["acme-disk"]["state"] == "RUNNING"

    set_trust(daemon, {**require, "signatures": "off", "keys": [str(keys / "gone.pub")]})
    refused = daemon.ctl("reload")
    assert refused.returncode == 1
    assert f"trust.keys: {keys / 'gone.pub'}: cannot read" in refused.stderr
    assert daemon.status()["acme-cpu-1.0.0"]["state"] == "INVALID"  # require still holds


def test_an_unreadable_trusted_key_is_one_line(daemon_factory: Any, tmp_path: Path) -> None:
    daemon: Daemon = daemon_factory("d", {"trust": {"keys": [str(tmp_path / "missing.pub")]}})
    daemon.start(wait=False)
    assert daemon.process is not None and daemon.process.wait(timeout=30) == 2
    lines = daemon.log().strip().split("\n")
    assert lines[-1] == (
        f"drivebayd: trust.keys: {tmp_path / 'missing.pub'}: cannot read (No such file or "
        "directory); check the path"
    )
