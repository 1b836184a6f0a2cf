"""The kernel's pure rules: lifecycle table, restart policy, start order."""

from __future__ import annotations

import pytest

from kernel.ordering import Node, plan
from kernel.restarts import RestartPolicy, RestartTracker
from kernel.states import TRANSITIONS, IllegalTransition, Lifecycle, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_state_has_a_row_and_every_target_is_a_state():
    assert set(TRANSITIONS) == set(State)
    for targets in TRANSITIONS.values():
        assert targets <= set(State)


def test_illegal_transition_raises_and_history_is_kept():
    clock = Clock()
    life = Lifecycle("x@1", clock)
    seen: list[State] = []
    life.listen(seen.append)
    life.move(State.STARTING, "go")
    clock.now += 5
    life.move(State.RUNNING, "pid 1")
    with pytest.raises(IllegalTransition, match="x@1: RUNNING -> BUILDING is not allowed"):
        life.move(State.BUILDING)
    assert seen == [State.STARTING, State.RUNNING]
    assert [(t.source, t.target, t.reason, t.at) for t in life.history] == [
        (State.STOPPED, State.STARTING, "go", 1000.0),
        (State.STARTING, State.RUNNING, "pid 1", 1005.0),
    ]
    for _ in range(60):
        life.move(State.BACKOFF)
        life.move(State.STARTING)
    assert len(life.history) == 50


def test_failed_starts_back_off_exponentially_with_jitter_then_fatal():
    clock = Clock()
    policy = RestartPolicy(backoff_initial_s=0.5, backoff_max_s=3, max_restarts=5, window_s=60)
    tracker = RestartTracker(policy, clock, rng=lambda: 0.5)  # 0.5: no jitter
    delays = []
    for _ in range(5):
        delays.append(tracker.next_delay(ran_for=None))
        clock.now += 1
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert tracker.next_delay(ran_for=None) is None  # the sixth within the window: FATAL
    jittery = RestartTracker(policy, clock, rng=lambda: 1.0)
    assert jittery.next_delay(None) == pytest.approx(0.55)


def test_a_good_run_restarts_at_once_and_old_failures_age_out():
    clock = Clock()
    tracker = RestartTracker(RestartPolicy(max_restarts=2, window_s=10, startsecs=1), clock)
    assert tracker.next_delay(ran_for=30.0) == 0.0
    assert tracker.next_delay(ran_for=30.0) == 0.0
    assert tracker.next_delay(ran_for=30.0) is None
    clock.now += 11  # outside the window
    assert tracker.next_delay(ran_for=30.0) == 0.0
    tracker.reset()
    assert tracker.next_delay(ran_for=None) is not None


def test_plan_orders_categories_then_requires():
    nodes = {
        "hv": Node("hv", "hypervisor"),
        "b": Node("b", "storage", ("a",)),
        "a": Node("a", "storage"),
        "net": Node("net", "network"),
        "zz": Node("zz", "zoo"),
        "aa": Node("aa", "apps"),
    }
    result = plan(nodes)
    assert result.waves == [["net"], ["a"], ["b"], ["hv"], ["aa"], ["zz"]]
    assert result.stop_waves() == [["zz"], ["aa"], ["hv"], ["b"], ["a"], ["net"]]
    assert result.blocked == {}


def test_plan_blocks_cycles_missing_and_cross_category_and_their_dependents():
    nodes = {
        "x": Node("x", "other", ("y",)),
        "y": Node("y", "other", ("x",)),
        "needs-x": Node("needs-x", "other", ("x",)),
        "ghostly": Node("ghostly", "other", ("ghost",)),
        "crossed": Node("crossed", "storage", ("net",)),
        "net": Node("net", "network"),
        "fine": Node("fine", "other"),
    }
    result = plan(nodes)
    assert result.blocked == {
        "x": "requires cycle: x -> y -> x",
        "y": "requires cycle: x -> y -> x",
        "needs-x": "requires x, which is blocked",
        "ghostly": "requires ghost, which is not installed",
        "crossed": "requires net of category network; requires may only name drivers of its "
        "own category (storage)",
    }
    assert result.waves == [["net"], ["fine"]]
