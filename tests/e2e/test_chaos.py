"""The chaos suite's quick form: what every attack must leave intact.

Runs ``scripts/bench/chaos.py --quick --json`` (real daemons, drivers,
signals, sockets and a tmpfs in a private mount namespace) and checks, per
attack, what no attack may break: every call answered, none run twice, out
of order or acknowledged without being run, no process of a driver left
behind, ``status`` always answered. The figures that depend on the
machine's speed (recovery times, RSS) are the benchmark's business.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
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


QUICK_DEADLINE_S = 230
# The quick form runs in the module fixture: the whole of it under one test.
pytestmark = pytest.mark.timeout(QUICK_DEADLINE_S + 70)


@pytest.fixture(scope="module")
def chaos(envs_dir: Path) -> tuple[dict[str, Any], str]:
    """The quick form's JSON, and its report for the failure messages."""
    run = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--envs-dir", str(envs_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:  # about 30 s; the rest is room for a cold package cache on a loaded machine
        stdout, stderr = run.communicate(timeout=QUICK_DEADLINE_S)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGINT)  # it stops its daemons and reaps every process
        stdout, stderr = run.communicate(timeout=60)
        pytest.fail(f"chaos.py --quick did not end within {QUICK_DEADLINE_S} s:\n{stderr[-3000:]}")
    *tables, last = stdout.splitlines() or [""]
    report = "\n".join([*tables, stderr[-3000:]])
    assert run.returncode == 0, report
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


def load_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The suite's load and ledger module, imported from its file (for this test only)."""
    spec = importlib.util.spec_from_file_location("_chaos_load", SCRIPT.parent / "_chaos_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_the_ledger_check_sees_every_kind_of_violation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checker the suite's verdicts rest on: fed a ledger with one of each
    violation, it counts each once (and a clean ledger as clean)."""
    chaos_load = load_module(monkeypatch)
    tally = chaos_load.Tally(["a", "b"])
    ops = [tally.next(resource) for resource in ("a", "a", "a", "b", "b")]
    assert ops == [(0, 1), (1, 2), (2, 3), (3, 1), (4, 2)]
    for op_id in range(5):
        tally.answered(op_id, None if op_id != 3 else "DriverCrashed")
    ledger = tmp_path / "ledger.txt"
    clean = ["0 1 a 10", "1 2 a 10", "2 3 a 11", "4 2 b 11"]
    ledger.write_text("".join(f"{line}\n" for line in clean))
    check = chaos_load.check_ledger(ledger, tally)
    assert (check.duplicated, check.reordered, check.ok_not_executed, check.unknown) == (0,) * 4
    # op 1 ran again, op 0 ran after op 2 of its resource, op 4 (OK) is missing,
    # and a line names an op never made.
    broken = ["1 2 a 10", "2 3 a 10", "0 1 a 11", "1 2 a 11", "9 1 a 11"]
    ledger.write_text("".join(f"{line}\n" for line in broken))
    check = chaos_load.check_ledger(ledger, tally)
    assert (check.duplicated, check.reordered, check.ok_not_executed, check.unknown) == (
        1,
        2,
        1,
        1,
    )
    assert tally.count(chaos_load.PENDING) == 0
    assert dict(tally.errors) == {"DriverCrashed": 1}
