"""The lifecycle table: named events, one target each, illegal events raise."""

from __future__ import annotations

import pytest

from drivebay.kernel.drivers.lifecycle import (
    TABLE,
    TARGET,
    TRANSITIONS,
    Event,
    IllegalTransition,
    Lifecycle,
    State,
)

S = State

# The moves the kernel made before events were named, plus the two same-state
# moves that used to be dropped silently (now recorded): a failed start
# retried at once, and a refused start with a new reason.
MOVES = {
    S.STOPPED: {S.BUILDING, S.STARTING, S.BLOCKED, S.INVALID, S.FAILED, S.STOPPED},
    S.BUILDING: {S.STARTING, S.FAILED, S.STOPPED, S.BACKOFF},
    S.STARTING: {S.RUNNING, S.BACKOFF, S.FATAL, S.FAILED, S.STOPPING, S.STOPPED, S.STARTING},
    S.RUNNING: {S.STOPPING, S.DRAINING, S.STARTING, S.BACKOFF, S.FATAL, S.STOPPED},
    S.DRAINING: {S.STOPPING, S.STOPPED, S.RUNNING},
    S.STOPPING: {S.STOPPED},
    S.BACKOFF: {S.STARTING, S.BUILDING, S.FATAL, S.STOPPED},
    S.FATAL: {S.BUILDING, S.STARTING, S.STOPPED},
    S.BLOCKED: {S.BUILDING, S.STARTING, S.STOPPED, S.BLOCKED},
    S.INVALID: {S.STOPPED},
    S.FAILED: {S.BUILDING, S.STARTING, S.STOPPED},
}


def test_the_table_allows_exactly_the_known_moves():
    assert {state: set(targets) for state, targets in TRANSITIONS.items()} == MOVES


def test_every_event_leads_to_one_state_wherever_it_happens():
    assert set(TARGET) == set(Event)
    for row in TABLE.values():
        for event, target in row.items():
            assert TARGET[event] is target


@pytest.mark.parametrize(
    ("state", "event"), [(s, e) for s in State for e in Event if e not in TABLE[s]]
)
def test_an_event_the_table_does_not_list_raises_and_changes_nothing(state, event):
    life = Lifecycle("x@1", clock=lambda: 0.0)
    life.state = state
    seen: list[State] = []
    life.listen(seen.append)
    with pytest.raises(IllegalTransition, match=f"x@1: {state} -> {TARGET[event]}"):
        life.fire(event)
    assert life.state is state
    assert not seen
    assert not life.history


@pytest.mark.parametrize(("state", "event"), [(s, e) for s in State for e in TABLE[s]])
def test_a_listed_event_moves_records_and_tells_listeners(state, event):
    life = Lifecycle("x@1", clock=lambda: 7.0)
    life.state = state
    seen: list[State] = []
    life.listen(seen.append)
    assert life.fire(event, "why") is TABLE[state][event]
    assert (life.state, life.reason, life.since) == (TABLE[state][event], "why", 7.0)
    assert seen == [life.state]
    assert [(t.source, t.target, t.reason) for t in life.history] == [(state, life.state, "why")]


def test_same_state_moves_are_recorded_not_dropped():
    life = Lifecycle("x@1", clock=lambda: 0.0)
    life.fire(Event.REFUSE, "no descriptors")
    life.fire(Event.SPAWN)
    life.fire(Event.SPAWN, "again at once")
    assert [(t.source, t.target) for t in life.history] == [
        (S.STOPPED, S.STOPPED),
        (S.STOPPED, S.STARTING),
        (S.STARTING, S.STARTING),
    ]
