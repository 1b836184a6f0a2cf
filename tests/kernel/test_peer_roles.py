"""Unix peers' roles off the event loop (``kernel/control/peers.py``): a
lookup that blocks (as NSS may) holds up nothing else on the loop, peers
connecting at once share one lookup, answers are kept for a while and for a
bounded number of peers, a reload's config is looked up afresh, and a lookup
that never answers is given up after its deadline."""

from __future__ import annotations

import asyncio
import os
import threading

import msgspec
import pytest

from drivebay.kernel.config import Config
from drivebay.kernel.control.authz import Role
from drivebay.kernel.control.peers import PeerRoles, slow_lookup

PEER = 54321


class Directory:
    """A user database whose answers the test releases: each lookup is counted
    and, while ``gate`` is clear, blocks its worker thread."""

    def __init__(self, blocking: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []
        self.gate = threading.Event()
        if not blocking:
            self.gate.set()

    def __call__(self, uid: int, gid: int, config: Config) -> Role | None:
        self.calls.append((uid, gid))
        assert self.gate.wait(60), "the test never released the lookup"
        return Role.viewer if uid == PEER else None


def test_a_blocking_lookup_leaves_the_loop_free_and_is_shared() -> None:
    directory = Directory(blocking=True)
    peers = PeerRoles(directory)
    config = Config()

    async def main() -> None:
        first = asyncio.create_task(peers.role(PEER, PEER, config))
        second = asyncio.create_task(peers.role(PEER, PEER, config))
        for _ in range(100):  # the loop turns while the lookup blocks its thread
            await asyncio.sleep(0)
        assert not first.done() and not second.done()
        assert directory.calls == [(PEER, PEER)]  # one lookup for both connections
        directory.gate.set()
        async with asyncio.timeout(30):
            assert await asyncio.gather(first, second) == [Role.viewer, Role.viewer]

    asyncio.run(main())


def test_answers_are_kept_a_while_for_a_bounded_number_of_peers() -> None:
    directory = Directory()
    peers = PeerRoles(directory, size=2)
    config = Config()

    async def main() -> None:
        assert await peers.role(PEER, PEER, config) is Role.viewer
        assert await peers.role(PEER, PEER, config) is Role.viewer
        assert len(directory.calls) == 1  # kept
        assert await peers.role(1001, 1001, config) is None  # no rule names it: kept too
        assert await peers.role(1002, 1002, config) is None
        assert len(directory.calls) == 3
        await peers.role(PEER, PEER, config)  # the oldest went
        assert len(directory.calls) == 4
        assert await peers.role(0, 0, config) is Role.admin  # root: no lookup
        assert await peers.role(os.geteuid(), 0, config) is Role.admin
        assert len(directory.calls) == 4
        reloaded = msgspec.convert({"authorization": {"users": {"nobody": "viewer"}}}, Config)
        await peers.role(PEER, PEER, reloaded)  # another config: looked up again
        assert len(directory.calls) == 5
        expiring = PeerRoles(directory, ttl_s=0.0)
        await expiring.role(PEER, PEER, config)
        await expiring.role(PEER, PEER, config)
        assert len(directory.calls) == 7  # kept for no time: each asks

    asyncio.run(main())


def test_a_lookup_that_never_answers_is_given_up() -> None:
    directory = Directory(blocking=True)
    peers = PeerRoles(directory, timeout_s=0.05)

    async def main() -> None:
        config = Config()
        with pytest.raises(TimeoutError):
            await peers.role(PEER, PEER, config)
        directory.gate.set()  # the thread ends; its late answer is kept
        async with asyncio.timeout(30):
            while peers._pending:
                await asyncio.sleep(0.01)
        assert await peers.role(PEER, PEER, config) is Role.viewer
        assert len(directory.calls) == 1

    asyncio.run(main())
    assert slow_lookup(PEER, 10.0).startswith(
        "drivebayd could not look up uid 54321's user and groups within 10s"
    )
