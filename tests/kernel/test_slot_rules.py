"""A driver slot's decisions without a process: its clock, its refusals, its resets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivebay.kernel.config import Config, TimeoutSettings
from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.drivers.restarts import RestartPolicy
from drivebay.kernel.drivers.slot import DriverSlot, SlotContext
from drivebay.sandbox.bundles import load_bundle
from tests.sandbox.bundles import make_bundle


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def slot_on(tmp_path: Path, clock: Clock, config: Config | None = None) -> DriverSlot:
    """A slot of driver alpha on ``clock``; nothing is built or spawned."""
    bundle = load_bundle(make_bundle(tmp_path / "drop", name="alpha"), tmp_path / "state")
    settings = config or Config()

    async def prepare(_: Any) -> tuple[Path, str]:
        raise AssertionError("not started here")

    context = SlotContext(
        current_config=lambda: settings,
        runtime_dir=tmp_path,
        prepare=prepare,
        on_spawn=lambda *_: None,
        on_reap=lambda *_: None,
        on_event=lambda *_: None,
        clock=clock,
    )
    return DriverSlot(bundle, context)


def test_probation_and_the_restart_rules_read_the_slots_one_clock(tmp_path):
    """Taking over and the crash loop after it are measured on one clock: a
    loop that begins within one window of taking over is on probation, one
    that begins later is not (no real time passes here)."""
    clock = Clock()
    policy = RestartPolicy(max_restarts=2, window_s=60)
    slot = slot_on(tmp_path, clock, Config(restart=policy))
    slot.took_over()
    assert slot.took_over_at == 5000.0
    clock.now += 59
    assert slot.restarts.next_delay(None) is not None
    assert slot.restarts.next_delay(None) is not None
    assert slot.restarts.next_delay(None) is None
    assert slot.crash_loop_on_probation()

    later = slot_on(tmp_path / "later", clock, Config(restart=policy))
    later.took_over()
    clock.now += 61
    for _ in range(2):
        assert later.restarts.next_delay(None) is not None
    assert later.restarts.next_delay(None) is None
    assert not later.crash_loop_on_probation()


def test_a_refused_start_says_why_once_per_reason(tmp_path):
    slot = slot_on(tmp_path, Clock())
    slot.block("requires beta, which is not running")
    slot.refuse_start("no descriptors left")
    slot.refuse_start("no descriptors left")
    slot.refuse_start("still no descriptors left")
    assert [(t.source, t.target, t.reason) for t in slot.lifecycle.history] == [
        (State.STOPPED, State.BLOCKED, "requires beta, which is not running"),
        (State.BLOCKED, State.STOPPED, "no descriptors left"),
        (State.STOPPED, State.STOPPED, "still no descriptors left"),
    ]


def test_a_start_resets_a_stuck_slot_and_leaves_a_stopped_one_be(tmp_path):
    slot = slot_on(tmp_path, Clock())
    slot.want_running(reset=True)
    assert not slot.lifecycle.history  # STOPPED already: nothing to record
    slot.stay_failed("broke before the restart")
    slot.want_running(reset=True)
    assert [(t.source, t.target) for t in slot.lifecycle.history] == [
        (State.STOPPED, State.FAILED),
        (State.FAILED, State.STOPPED),
    ]


def test_a_process_gets_the_configs_timeouts_with_the_manifests_call_deadline(tmp_path):
    timeouts = TimeoutSettings(start_s=7, call_s=9)
    slot = slot_on(tmp_path, Clock(), Config(timeouts=timeouts))
    assert slot._timeouts() is timeouts  # one type: the config's, passed as it is
    assert slot.call_timeout == 9


def test_one_rule_bounds_every_wait_on_a_version():
    timeouts = TimeoutSettings(start_s=30, drain_s=10, term_s=5, kill_s=5, call_s=30)
    assert timeouts.settle_budget() == 2 * 30 + 10 + 5 + 5 + 600
    assert timeouts.handover_budget(30, 120) == 2 * 120 + 30
