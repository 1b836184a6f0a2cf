"""The kernel's pure rules: lifecycle table, restart policy, start order."""

from __future__ import annotations

import pytest

from drivebay.kernel.drivers.lifecycle import (
    TRANSITIONS,
    Event,
    IllegalTransition,
    Lifecycle,
    State,
)
from drivebay.kernel.drivers.ordering import Node, plan, stop_order
from drivebay.kernel.drivers.restarts import RestartPolicy, RestartTracker


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
    life.fire(Event.SPAWN, "go")
    clock.now += 5
    life.fire(Event.UP, "pid 1")
    with pytest.raises(IllegalTransition, match="x@1: RUNNING -> BUILDING is not allowed"):
        life.fire(Event.BUILD)
    assert seen == [State.STARTING, State.RUNNING]
    assert [(t.source, t.target, t.reason, t.at) for t in life.history] == [
        (State.STOPPED, State.STARTING, "go", 1000.0),
        (State.STARTING, State.RUNNING, "pid 1", 1005.0),
    ]
    for _ in range(60):
        life.fire(Event.BACK_OFF)
        life.fire(Event.SPAWN)
    assert len(life.history) == 50


def test_failed_starts_back_off_exponentially_with_jitter_then_fatal():
    clock = Clock()
    policy = RestartPolicy(backoff_initial_s=0.5, backoff_max_s=3, max_restarts=5, window_s=60)
    tracker = RestartTracker(lambda: policy, clock, rng=lambda: 0.5)  # 0.5: no jitter
    delays = []
    for _ in range(5):
        delays.append(tracker.next_delay(ran_for=None))
        clock.now += 1
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert tracker.next_delay(ran_for=None) is None  # the sixth within the window: FATAL
    jittery = RestartTracker(lambda: policy, clock, rng=lambda: 1.0)
    assert jittery.next_delay(None) == pytest.approx(0.55)


def test_a_good_run_restarts_at_once_and_old_failures_age_out():
    clock = Clock()
    tracker = RestartTracker(lambda: RestartPolicy(max_restarts=2, window_s=10, startsecs=1), clock)
    assert tracker.next_delay(ran_for=30.0) == 0.0
    assert tracker.next_delay(ran_for=30.0) == 0.0
    assert tracker.next_delay(ran_for=30.0) is None
    clock.now += 11  # outside the window
    assert tracker.next_delay(ran_for=30.0) == 0.0
    tracker.reset()
    assert tracker.next_delay(ran_for=None) is not None


def test_a_reloaded_policy_reaches_a_tracker_that_is_counting():
    clock = Clock()
    policy = RestartPolicy(max_restarts=2, window_s=60, startsecs=1)
    tracker = RestartTracker(lambda: policy, clock)
    assert tracker.next_delay(ran_for=30.0) == 0.0
    assert tracker.next_delay(ran_for=30.0) == 0.0
    policy = RestartPolicy(max_restarts=4, window_s=60, startsecs=1, backoff_initial_s=7, jitter=0)
    assert tracker.policy.max_restarts == 4
    assert tracker.next_delay(ran_for=30.0) == 0.0  # the old policy said FATAL here
    assert tracker.next_delay(ran_for=None) == 7.0  # its backoff too
    assert tracker.next_delay(ran_for=None) is None
    policy = RestartPolicy(max_restarts=4, window_s=1, startsecs=1)
    clock.now += 2  # its window too: the old restarts aged out
    assert tracker.next_delay(ran_for=30.0) == 0.0


def test_fatal_is_retried_after_a_delay_that_doubles_up_to_a_cap():
    clock = Clock()
    policy = RestartPolicy(fatal_retry_initial_s=10, fatal_retry_max_s=300)
    tracker = RestartTracker(lambda: policy, clock)
    delays = []
    for _ in range(7):
        delays.append(tracker.fatal_retry_delay())
        clock.now += 5
        tracker.retry_fatal()
        clock.now += 1  # FATAL again one second after the retry
    assert delays == [10, 20, 40, 80, 160, 300, 300]
    clock.now += 300  # a retry that held for fatal_retry_max_s: start over
    assert tracker.fatal_retry_delay() == 10
    tracker.reset()  # an operator's start, a new bundle
    assert tracker.fatal_retry_delay() == 10
    policy = RestartPolicy(fatal_retry_initial_s=None)
    assert tracker.fatal_retry_delay() is None  # stays FATAL, as configured


def test_a_fatal_retry_is_a_fresh_round_of_restarts():
    clock = Clock()
    tracker = RestartTracker(lambda: RestartPolicy(max_restarts=1, window_s=600), clock)
    assert tracker.next_delay(ran_for=30.0) == 0.0
    assert tracker.next_delay(ran_for=30.0) is None
    tracker.fatal_retry_delay()
    tracker.retry_fatal()
    assert tracker.next_delay(ran_for=30.0) == 0.0
    assert tracker.next_delay(ran_for=30.0) is None


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


def test_stop_order_groups_by_reverse_waves_with_the_unplanned_first():
    nodes = {
        "base": Node("base", "storage"),
        "left": Node("left", "storage", ("base",)),
        "right": Node("right", "storage", ("base",)),
        "net": Node("net", "network"),
        "ghostly": Node("ghostly", "storage", ("ghost",)),
    }
    result = plan(nodes)
    items = [("net", 1), ("base", 1), ("left", 1), ("ghostly", 1), ("right", 1), ("left", 2)]
    assert stop_order(result, items, lambda item: item[0]) == [
        [("ghostly", 1)],  # blocked: not running, nothing waits for it
        [("left", 1), ("right", 1), ("left", 2)],  # one wave: stopped together
        [("base", 1)],
        [("net", 1)],
    ]
    assert stop_order(result, [("base", 1)], lambda item: item[0]) == [[("base", 1)]]
