"""The state moves' window: wider while moves end within the target, halved when not."""

from __future__ import annotations

from drivebay.kernel.drivers.move_window import STALL_TARGET_S, START, MoveWindow


def test_it_opens_while_moves_are_quick_up_to_its_limit() -> None:
    window = MoveWindow(limit=10)
    assert window.width == START
    for n in range(20):
        window.ended(STALL_TARGET_S / 2, now=n)
    assert window.width == 10


def test_a_slow_move_halves_it_once_per_target_interval() -> None:
    window = MoveWindow(limit=64)
    for n in range(20):
        window.ended(0.0, now=n)
    assert window.width == START + 20
    window.ended(STALL_TARGET_S * 3, now=100.0)
    assert window.width == (START + 20) // 2
    window.ended(STALL_TARGET_S * 3, now=100.0 + STALL_TARGET_S / 2)  # the same wave of slowness
    assert window.width == (START + 20) // 2
    for n in range(10):
        window.ended(STALL_TARGET_S * 3, now=200.0 + n)
    assert window.width == 1  # never below one: the handover always goes on


def test_a_limit_below_the_start_is_the_width() -> None:
    assert MoveWindow(limit=2).width == 2
    assert MoveWindow(limit=0).width == 1


def test_a_fixed_window_is_its_limit_whatever_the_moves_take() -> None:
    window = MoveWindow(limit=100, adapts=False)
    window.ended(STALL_TARGET_S * 10, now=1.0)
    window.ended(0.0, now=2.0)
    assert window.width == 100
