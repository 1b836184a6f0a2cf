"""How long a clustered ``drivebayd`` takes to stop on SIGTERM: node-a of
two (``renew_s`` 1 s, ``timeouts.drain_s`` 3 s) owns two resources, idle or
with calls in flight (``slow`` for a few seconds, on its own resource, on
node-b's, or both). A measurement, not part of the suite (the name is not
``test_*``); run it explicitly and read the figures it prints:

    .venv/bin/python -m pytest -s tests/cluster/measure_stop.py
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from drivebay.client import AsyncClient
from tests.cluster.test_daemon_calls import operations, two_nodes
from tests.cluster.test_daemon_shutdown import two_each
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures
from tests.e2e.harness import Daemon, wait_for

CASES = {  # name: (seconds of the call on node-a's resource, on node-b's), None: no call
    "idle": (None, None),
    "own call 1 s": (1.0, None),
    "remote call 1 s": (None, 1.0),
    "both 1.5 s": (1.5, 1.5),
    "both 6 s (past drain_s)": (6.0, 6.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stop(case: str, daemon_factory: Any, database: str, tmp_path: Path) -> None:  # noqa: F811
    a, _ = two_nodes(daemon_factory, database, tmp_path)
    for resource in ("r0", "r1", "r2", "r3"):
        assert a.ctl("resource", "add", resource, "--driver", "ledger").returncode == 0
    owned = wait_for(lambda: two_each(database), 30, "two resources on each node")
    on = {node: min(r for r, (o, _) in owned.items() if o == node) for node in ("node-a", "node-b")}
    calls = dict(zip(("node-a", "node-b"), CASES[case], strict=True))

    async def main() -> tuple[float, list[Any]]:
        async with AsyncClient(str(a.socket)) as client:
            made = [
                asyncio.ensure_future(client.call(on[n], "slow", {"seconds": s}, timeout=30))
                for n, s in calls.items()
                if s is not None
            ]

            def sent() -> bool:
                ops = operations(database)
                return sum(op[2] == "slow" and op[3] == "dispatched" for op in ops) == len(made)

            await asyncio.to_thread(wait_for, sent, 30, "the calls sent")
            took = await asyncio.to_thread(stop, a)
            return took, await asyncio.gather(*made, return_exceptions=True)

    took, answers = asyncio.run(main())
    print(f"\n{case}: stopped in {took:.3f} s; answers {answers}")


def stop(daemon: Daemon) -> float:
    """SIGTERM, and the seconds until the process has exited (status 0)."""
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert daemon.process.wait(60) == 0
    return time.monotonic() - start
