"""Closing a resource's actor: its task always ends, its callers get an
answer, and a cancellation of whoever closes it is not lost."""

from __future__ import annotations

import asyncio

import pytest

from drivebay.kernel.resources.actor import DriverAbsent, ResourceActor
from drivebay.protocol.errors import RequestError
from tests.helpers import run


async def no_driver(actor: ResourceActor) -> object:
    raise DriverAbsent(f"no driver for {actor.resource_id}")


def test_a_cancelled_close_still_closes_and_is_cancelled() -> None:
    async def main() -> None:
        actor = ResourceActor("r1", "d", {}, no_driver, mailbox_size=4)  # type: ignore[arg-type]
        actor.launch()
        await asyncio.sleep(0)  # the task waits for work
        closing = asyncio.ensure_future(actor.close(detach=False))
        await asyncio.sleep(0)  # close waits for the task to end
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert [t for t in asyncio.all_tasks() if t.get_name() == "actor r1"] == []
        with pytest.raises(RequestError, match="resource r1 was removed"):
            actor.submit("op", {})

    run(main())
