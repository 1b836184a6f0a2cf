"""``drivebay.testing``'s ``upgrade`` hands state and sockets over between two
versions of a bundle, as the daemon does, and hands them back when the new
version's ``takeover`` fails."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from drivebay.author.running import RunSettings
from drivebay.protocol.errors import HandoverFailed
from drivebay.testing import DriverHarness
from tests.helpers import FIXTURES
from tests.sandbox.bundles import make_bundle

SOURCE = (FIXTURES / "stateful" / "src" / "stateful.py").read_text()
PROPERTIES = [
    {"key": "journal", "type": "string", "required": True},
    {"key": "fail_takeover_in", "type": "string"},
]


def bundle(staging: Path, version: str, entry: str = "Stateful") -> Path:
    extra = {"entrypoint": f"stateful:{entry}", "properties": PROPERTIES}
    return make_bundle(staging, "stateful", version, extra, {"stateful.py": SOURCE})


def ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        return conn.makefile().readline().strip()


@pytest.mark.slow
def test_the_harness_hands_state_over_and_back(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    settings = RunSettings(envs_dir=tmp_path / "envs")
    with DriverHarness(bundle(tmp_path, "1.0.0"), settings) as driver:
        driver.attach("r1", {"journal": str(journal)})
        driver.attach("r2", {"journal": str(journal), "fail_takeover_in": "3.0.0"})
        port = driver.call("r1", "bump")["port"]

        driver.upgrade(bundle(tmp_path, "2.0.0"))
        facts = driver.call("r1", "bump")
        assert (facts["version"], facts["count"], facts["port"]) == ("2.0.0", 2, port)
        assert facts["from_version"] == "1.0.0"
        assert ask(port) == "2.0.0 r1 3"

        # r1 moves, r2's takeover fails: r1 is handed back, r2 never left.
        with pytest.raises(HandoverFailed, match="takeover of r2 configured to fail"):
            driver.upgrade(bundle(tmp_path, "3.0.0"))
        assert driver.version == "2.0.0"
        facts = driver.call("r1", "bump")
        assert (facts["count"], facts["port"], facts["from_version"]) == (4, port, "3.0.0")
        assert ask(port) == "2.0.0 r1 5"

        # A version without takeover: attached afresh, the state is not asked for.
        driver.upgrade(bundle(tmp_path, "4.0.0", "NoTakeover"))
        assert driver.call("r1", "bump")["count"] == 1
    lines = journal.read_text().splitlines()
    assert "2.0.0 r2 handoff_aborted" in lines
    assert "2.0.0 r1 takeover 3.0.0" in lines
    assert "2.0.0 r1 handoff" in lines and lines.count("2.0.0 r1 detach") == 2
