"""The systemd unit file we ship is one systemd accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "drivebayd.service"


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (scripts/test does so)"
    text = UNIT.read_text()
    assert "Delegate=yes" in text
    # ExecStart must name an executable that exists: the one this checkout runs.
    drivebayd = Path(sys.executable).parent / "drivebayd"
    unit = tmp_path / "drivebayd.service"
    unit.write_text(text.replace("/usr/local/bin/drivebayd", str(drivebayd)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
