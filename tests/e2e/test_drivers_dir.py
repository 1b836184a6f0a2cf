"""The drivers dir against a real daemon: whatever it holds (links to /, huge
trees), status keeps answering; a bundle the host could not take is taken
once the cause goes, without a restart."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from drivebay.client import AsyncClient
from tests.e2e.harness import Daemon
from tests.helpers import run
from tests.sandbox.bundles import make_bundle

LINK_FIX = "put the bundle itself in the drivers dir, not a link to it"


def build(tmp_path: Path, name: str) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return make_bundle(staging, name=name)


def huge_tree(root: Path, folders: int = 100, files: int = 1000) -> Path:
    for i in range(folders):
        folder = root / f"d{i:03}"
        folder.mkdir(parents=True)
        for j in range(files):
            (folder / f"f{j:04}").touch()
    return root


def flip(path: Path) -> None:
    if path.exists():
        path.unlink()
    else:
        path.touch()


async def status_latencies(daemon: Daemon, huge: Path, walks: int) -> list[float]:
    """Status requests on one connection until the daemon has walked ``huge``
    ``walks`` times more: every 20th request adds or removes a badly named
    file in it, which changes its verdict."""
    client = await AsyncClient.connect(str(daemon.socket))
    base = daemon.log().count("rejected bundle: huge:")
    end = time.monotonic() + 60
    try:
        took: list[float] = []
        while daemon.log().count("rejected bundle: huge:") < base + walks:
            assert time.monotonic() < end, f"huge walked fewer than {walks} times in 60 s"
            if len(took) % 20 == 0:
                flip(huge / "back\\slash")
            start = time.perf_counter()
            rows = await client.request("status")
            took.append(time.perf_counter() - start)
            assert {row["name"] for row in rows} >= {"alpha", "oops", "usr", "huge"}
        return took
    finally:
        await client.close()


def test_status_answers_whatever_the_drivers_dir_holds(daemon_factory, tmp_path):
    daemon = daemon_factory()
    huge = huge_tree(daemon.drivers / "huge")  # 100,100 entries
    (daemon.drivers / "oops").symlink_to("/")
    (daemon.drivers / "usr").symlink_to("/usr")
    daemon.drop(build(tmp_path, "alpha"))
    daemon.start()
    daemon.wait_state("alpha", "RUNNING")
    rows = daemon.status()
    assert rows["oops"]["state"] == rows["usr"]["state"] == rows["huge"]["state"] == "INVALID"
    assert rows["oops"]["message"] == f"oops: is a symbolic link (to /); {LINK_FIX}"
    assert rows["usr"]["message"] == f"usr: is a symbolic link (to /usr); {LINK_FIX}"
    assert rows["huge"]["message"] == (
        "huge: more than 10000 entries; a bundle may hold at most 10000"
    )
    took = sorted(run(status_latencies(daemon, huge, walks=5)))
    p99, worst = took[int(len(took) * 0.99)], took[-1]
    # Loose bounds (the aim is 50 ms): a walk on the loop stalled status for seconds.
    assert p99 < 1.0 and worst < 2.0, f"status p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms"
    assert daemon.log().count("rejected bundle: oops:") == 1  # a link is looked at once


def test_a_bundle_the_store_could_not_take_is_taken_once_the_cause_goes(daemon, tmp_path):
    store = daemon.state / "bundles"
    shutil.rmtree(store, ignore_errors=True)
    # A file where the store's directory must be: every store fails, also as root.
    store.write_text("in the way")
    daemon.drop(build(tmp_path, "alpha"))
    row = daemon.wait_state("alpha-1.0.0", "INVALID")
    assert "cannot store bundle alpha-1.0.0" in row["message"]
    assert "trying again at" in row["message"]
    store.unlink()
    daemon.wait_state("alpha", "RUNNING", deadline=30)
    rows = json.loads(daemon.ctl("status", "--json").stdout)
    assert [r["name"] for r in rows] == ["alpha"]
