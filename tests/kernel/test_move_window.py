"""The state moves' window: wider while moves stay near the quickest, halved when they queue."""

from __future__ import annotations

from drivebay.kernel.drivers.move_window import FLOOR_S, START, MoveWindow


def test_it_opens_while_moves_are_quick_up_to_its_limit() -> None:
    window = MoveWindow(limit=10)
    assert window.width == START
    for n in range(20):
        window.ended(FLOOR_S / 2, now=n)
    assert window.width == 10


def test_moves_slower_than_twice_the_quickest_halve_it_once_per_their_time() -> None:
    window = MoveWindow(limit=64)
    for n in range(20):
        window.ended(0.003, now=n)  # the quickest: 3 ms
    assert window.width == START + 20
    window.ended(0.006, now=30.0)  # twice the quickest: still quick
    assert window.width == START + 21
    window.ended(0.010, now=40.0)  # queueing
    assert window.width == (START + 21) // 2
    window.ended(0.010, now=40.005)  # the same wave of queueing
    assert window.width == (START + 21) // 2
    for n in range(10):
        window.ended(0.010, now=50.0 + n)
    assert window.width == 1  # never below one: the handover always goes on


def test_slow_hooks_overlap_as_long_as_they_keep_their_pace() -> None:
    window = MoveWindow(limit=32)
    for n in range(40):
        window.ended(0.020 + n * 0.0001, now=n)  # 20 ms each, whatever the width
    assert window.width == 32


def test_a_limit_below_the_start_is_the_width() -> None:
    assert MoveWindow(limit=2).width == 2
    assert MoveWindow(limit=0).width == 1


def test_a_fixed_window_is_its_limit_whatever_the_moves_take() -> None:
    window = MoveWindow(limit=100, adapts=False)
    window.ended(1.0, now=1.0)
    window.ended(0.0, now=2.0)
    assert window.width == 100
