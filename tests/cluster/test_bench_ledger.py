"""The ledger check of ``scripts/bench/cluster.py`` (``_cluster_load.check``):
what it calls lost, duplicated, reordered and unexplained, on a ledger written
here in the driver's line format (``number seq resource node op_id t_ns``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"


@pytest.fixture
def bench_load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("_cluster_load", "_cluster_nodes", "_common"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("_cluster_load")


def test_the_ledger_check_counts_lost_duplicated_reordered(
    bench_load: ModuleType, tmp_path: Path
) -> None:
    issued = bench_load.Issued()
    for resource, seq in [("r1", 1), ("r1", 2), ("r1", 3), ("r2", 1), ("r2", 2), ("r2", 3)]:
        issued.make(resource, seq)
    issued.outcome[:] = bytes([1, 1, 1, 1, 3, 1])  # call 4: its node died with it in flight
    lines = [
        "0 1 r1 node-a 10 100",
        "2 3 r1 node-a 12 300",
        "1 2 r1 node-b 11 400",  # ran after call 2 (seq 3): reordered
        "3 1 r2 node-a 13 100",
        "3 1 r2 node-b/reconcile 13 200",  # run twice: duplicated (by a reconcile)
        "9 1 r2 node-b 19 250",  # no such call made
    ]  # call 5 (r2, seq 3) answered OK, never ran: lost; call 4 unknown, never ran: not lost
    ledger = tmp_path / "ledger.txt"
    ledger.write_text("\n".join(lines) + "\n")
    found = bench_load.check(ledger, issued)
    assert (found.made, found.answered_ok, found.unknown, found.ran) == (6, 5, 1, 4)
    assert (found.lost, found.duplicated, found.reordered, found.unexplained) == (1, 1, 1, 1)
    assert found.reconciled == 1


def test_a_clean_ledger_has_nothing_to_say(bench_load: ModuleType, tmp_path: Path) -> None:
    issued = bench_load.Issued()
    ledger = tmp_path / "ledger.txt"
    with ledger.open("w") as out:
        for n in range(10):
            issued.make(f"r{n % 2}", n // 2 + 1)
            issued.outcome[n] = 1
            out.write(f"{n} {n // 2 + 1} r{n % 2} node-a {n} {n}\n")
    found = bench_load.check(ledger, issued)
    assert (found.lost, found.duplicated, found.reordered, found.unexplained) == (0, 0, 0, 0)
    assert found.ran == found.answered_ok == 10
