"""The chaos suite's quick form: what every attack must leave intact.

Runs ``scripts/bench/chaos.py --quick --json`` (real daemons, drivers,
signals, sockets and a tmpfs in a private mount namespace) and checks, per
attack, what no attack may break: every call answered, none run twice, out
of order or acknowledged without being run, no process of a driver left
behind, ``status`` always answered. The figures that depend on the
machine's speed (recovery times, RSS) are the benchmark's business.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench" / "chaos.py"
ATTACKS = (
    "kill_storm",
    "sigstop_driver",
    "sigstop_spare",
    "hostile_driver",
    "control_abuse",
    "daemon_kill",
    "disk_full",
)
KEYS = {
    "accepted",
    "ok",
    "errors",
    "never_answered",
    "duplicated",
    "reordered",
    "ok_not_executed",
    "recovery_ms_p50",
    "recovery_ms_p99",
    "status_ms_p99",
    "rss_kb_before",
    "rss_kb_after",
    "fds_before",
    "fds_after",
    "processes_left",
}


@pytest.fixture(scope="module")
def chaos(envs_dir: Path) -> tuple[dict[str, Any], str]:
    """The quick form's JSON, and its report for the failure messages."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--envs-dir", str(envs_dir)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=115,
        cwd=ROOT,
    )
    *tables, last = result.stdout.splitlines() or [""]
    report = "\n".join([*tables, result.stderr[-3000:]])
    assert result.returncode == 0, report
    return json.loads(last), report


def broken(name: str, figures: dict[str, Any]) -> list[str]:
    """What an attack broke, one line each."""
    if not set(figures) >= KEYS | {"status_unanswered"}:
        return [f"{name}: keys missing: {sorted(KEYS - set(figures))}"]
    found = []
    if figures["accepted"] < 1000:
        found.append(f"only {figures['accepted']} calls accepted")
    answered = figures["ok"] + sum(figures["errors"].values()) + figures["never_answered"]
    if answered != figures["accepted"]:
        found.append(f"{answered} calls counted of {figures['accepted']} accepted")
    zeros = ("never_answered", "duplicated", "reordered", "ok_not_executed", "processes_left")
    found += [f"{key} = {figures[key]}" for key in zeros if figures[key] != 0]
    if figures["status_unanswered"] or figures["status_ms_p99"] is None:
        found.append(f"status unanswered {figures['status_unanswered']} times")
    return [f"{name}: {line}" for line in found]


@pytest.mark.slow
def test_no_attack_loses_duplicates_reorders_or_leaves_anything(
    chaos: tuple[dict[str, Any], str],
) -> None:
    found, report = chaos
    assert set(found["attacks"]) == set(ATTACKS), report
    failures = [line for name, f in found["attacks"].items() for line in broken(name, f)]
    summary = report[report.find("\nattack ") :]  # the last table, and the log
    assert not failures, "\n".join([*failures, summary])


@pytest.mark.slow
def test_the_kill_storm_is_a_storm(chaos: tuple[dict[str, Any], str]) -> None:
    """At least 50 kills under at least 50,000 calls (each kill a recovery)."""
    found, report = chaos
    storm = re.search(r"^  (\d+) kills under ([\d,]+) calls$", report, re.M)
    assert storm is not None, report
    assert int(storm[1]) >= 50, report
    assert found["attacks"]["kill_storm"]["accepted"] >= 50_000, report
