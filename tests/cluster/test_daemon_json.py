"""Arguments and results cross the cluster's queue as JSON: bytes arrive as
base64 text whichever node accepted the call; what JSON cannot hold (a
msgpack extension type) is refused in one line, and queues nothing, and the
calls queued beside it are not harmed."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import msgspec
import pytest

from drivebay.client import AsyncClient, OperationError
from tests.cluster.test_daemon_calls import one_on_each, operations, two_nodes
from tests.e2e.conftest import daemon_factory, envs_dir  # noqa: F401 -- fixtures


def test_bytes_cross_as_base64_and_an_extension_type_is_refused(
    daemon_factory: Any,  # noqa: F811
    database: str,
    tmp_path: Path,
) -> None:
    a, _ = two_nodes(daemon_factory, database, tmp_path)
    on_a, on_b = one_on_each(a, database)
    text = base64.b64encode(b"\x00\xffdata").decode()

    async def main() -> None:
        async with AsyncClient(str(a.socket)) as client, asyncio.timeout(30):
            # Through node-a: run by node-b (its answer comes through the
            # database) and by node-a itself; the driver gets the text.
            for resource in (on_b, on_a):
                answer = await client.call(resource, "plain", {"value": b"\x00\xffdata"})
                assert answer["value"] == text, answer
            with pytest.raises(OperationError) as refused:
                await client.call(on_b, "plain", {"value": msgspec.msgpack.Ext(5, b"x")})
            assert refused.value.type == "RequestError", refused.value
            assert "cannot be stored in the cluster's queue" in refused.value.message
            assert "\n" not in refused.value.message
            for resource in (on_b, on_a):
                # A float jsonb prints as an integer (1e20: 100000000000000000000)
                # is a float again, as one node answers (an integer past 64 bits
                # cannot even cross msgpack).
                answer = await client.call(resource, "plain", {"value": 1e20})
                assert answer["value"] == 1e20 and isinstance(answer["value"], float), answer
                # NaN: refused, never stored as null.
                with pytest.raises(OperationError) as refused:
                    await client.call(resource, "plain", {"value": float("nan")})
                assert refused.value.type == "RequestError", refused.value
                # A result answered the same whichever node ran it: as stored.
                assert await client.call(resource, "raw", {}) == {
                    "raw": base64.b64encode(b"\x00\xff").decode(),
                    "7": "int key",
                }
            # Calls that arrive with it are queued as ever.
            many = await asyncio.gather(
                *(client.call(on_b, "plain", {"value": n}) for n in range(5)),
                client.call(on_b, "plain", {"value": msgspec.msgpack.Ext(5, b"x")}),
                return_exceptions=True,
            )
            assert [m["value"] for m in many[:5] if isinstance(m, dict)] == list(range(5))
            assert isinstance(many[5], OperationError), many[5]

    asyncio.run(main())
    queued = [op for op in operations(database) if op[2] == "plain"]
    assert len(queued) == 9 and {op[3] for op in queued} == {"done"}, queued
