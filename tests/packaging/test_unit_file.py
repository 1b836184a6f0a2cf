"""The systemd unit file we ship is one systemd accepts, and says what the daemon needs."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "drivebayd.service"


def service_lines() -> list[str]:
    text = UNIT.read_text()
    section = text.split("[Service]\n", 1)[1].split("\n[", 1)[0]
    return section.splitlines()


def directives() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in service_lines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key] = value
    return found


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (scripts/test does so)"
    text = UNIT.read_text()
    # ExecStart must name an executable that exists: the one this checkout runs.
    drivebayd = Path(sys.executable).parent / "drivebayd"
    unit = tmp_path / "drivebayd.service"
    unit.write_text(text.replace("/usr/local/bin/drivebayd", str(drivebayd)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_the_daemon_notifies_systemd_and_logs_json():
    found = directives()
    assert found["Type"] == "notify"
    assert found["NotifyAccess"] == "main"  # not uv, not a driver
    assert int(found["WatchdogSec"]) > 0
    assert "--log-format json" in found["ExecStart"]
    assert found["Delegate"] == "yes"
    assert found["KillMode"] == "mixed"  # SIGTERM to the daemon; it stops the drivers


def test_hardening_leaves_drivers_their_namespaces_and_users():
    found = directives()
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert key in found, key
    # PID and user namespaces per driver, and the switch to a `user:`.
    for key in ("RestrictNamespaces", "PrivatePIDs", "PrivateUsers", "CapabilityBoundingSet"):
        assert key not in found, key
    assert "AF_UNIX" in found["RestrictAddressFamilies"].split()
    # The uv cache must be somewhere ProtectSystem=strict leaves writable.
    assert found["Environment"].startswith("UV_CACHE_DIR=/var/cache/drivebay")
    assert found["CacheDirectory"] == "drivebay"


def test_every_group_of_settings_says_why():
    """A run of settings starts under a comment: none follows a blank line."""
    lines = ["", *service_lines()]
    for before, line in itertools.pairwise(lines):
        if line and not line.startswith("#"):
            assert before, f"{line!r} has no comment saying why"
