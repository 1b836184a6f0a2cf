"""Room for a takeover's descriptors: read once from /proc, reserved while in flight."""

from __future__ import annotations

import asyncio
import os

import pytest

from drivebay.kernel.drivers import fd_room
from drivebay.kernel.drivers.fd_room import DescriptorRoom, NoRoom, held_by
from tests.helpers import run


def test_reservations_add_up_until_released() -> None:
    async def main() -> None:
        pid = os.getpid()
        room = DescriptorRoom(held_by(pid) + 20)
        async with room.reserved(pid, 12):
            with pytest.raises(NoRoom) as caught:
                async with room.reserved(pid, 12):
                    pass
            assert caught.value.count == 12 and caught.value.held >= 12
        async with room.reserved(pid, 12):  # released: it fits again
            pass
        async with DescriptorRoom(0).reserved(pid, 10**6):  # no limit set: no check
            pass
        async with DescriptorRoom(100).reserved(None, 99):  # /proc unknown: the limit alone
            pass

    run(main())


def test_takeovers_that_arrive_together_share_one_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings: list[int] = []

    def counted(pid: int) -> int:
        readings.append(pid)
        return held_by(pid)

    monkeypatch.setattr(fd_room, "held_by", counted)

    async def main() -> None:
        room = DescriptorRoom(10**6)

        async def one() -> None:
            async with room.reserved(os.getpid(), 1):
                await asyncio.sleep(0)

        await asyncio.gather(*(one() for _ in range(50)))

    run(main())
    assert readings == [os.getpid()]


def test_an_unreadable_process_holds_nothing_we_know_of() -> None:
    assert held_by(2**22 + 12345) == 0


def test_takeovers_one_after_another_share_a_recent_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings: list[int] = []

    def counted(pid: int) -> int:
        readings.append(pid)
        return held_by(pid)

    monkeypatch.setattr(fd_room, "held_by", counted)
    monkeypatch.setattr(fd_room, "RECENT_S", 3600.0)  # every check below is "recent"

    async def main() -> None:
        pid = os.getpid()
        room = DescriptorRoom(held_by(pid) + 30)
        for _ in range(5):  # 5 x 5 sent: counted on the one reading, still room
            async with room.reserved(pid, 5):
                pass
        assert readings == [pid]
        # 25 counted as sent, 10 more do not fit on that reading: read again
        # (this process holds no more than it did), and they fit.
        async with room.reserved(pid, 10):
            pass
        assert readings == [pid, pid]

    run(main())
