"""Named fault points of a dispatch, held by a test: enabled only by the
environment variable ``DRIVEBAY_TEST_FAULT_SOCKET``, read here and nowhere else.

A test that sets it to the path of a Unix socket it listens on makes every
dispatch of this node stop at each point ("dispatch" before the dispatch
mark is committed, "send" between that commit and the fence check before
the send, "result" before the result is written; ``dispatch.FaultPoint``):
the node connects, writes one JSON line ``{"node", "point", "op",
"resource", "operation"}`` and waits for one line back before it
goes on, so the test decides how long the dispatch stays there (a pause of
the node that lands exactly at that point). Without the variable the hook
is None and a dispatch costs nothing more. A socket that cannot be reached
holds nothing (the test is gone); a reply is awaited at most ``HOLD_S``.

An environment variable rather than a config key: the daemon's config is
the operator's, reloaded and documented for production, and a test setting
there could be left on by a copied file; the variable only reaches a
process its starter meant it for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Final

from drivebay.kernel.cluster.dispatch import FaultPoint
from drivebay.kernel.cluster.repository import QueuedOperation

ENV: Final = "DRIVEBAY_TEST_FAULT_SOCKET"
HOLD_S: Final = 120.0  # the longest a test may hold one point
log = logging.getLogger("drivebay.cluster")


def from_environment(node_id: str) -> FaultPoint | None:
    """The hook the variable asks for, or None (production)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    log.warning("cluster: fault points held by the test socket %s (%s)", path, ENV)
    return SocketHold(path, node_id)


class SocketHold:
    """Asks the test's socket at each point and waits for its reply."""

    def __init__(self, path: str, node_id: str) -> None:
        self.path = path
        self.node_id = node_id

    async def __call__(self, point: str, op: QueuedOperation) -> None:
        said = {
            "node": self.node_id,
            "point": point,
            "op": op.id,
            "resource": op.resource_id,
            "operation": op.operation,
        }
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), 5)
        except (OSError, TimeoutError):
            return  # no test listens: nothing is held
        try:
            writer.write(json.dumps(said).encode() + b"\n")
            await writer.drain()
            await asyncio.wait_for(reader.readline(), HOLD_S)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
