"""Reconciling's decisions, without a process: facts in, actions out."""

from __future__ import annotations

from dataclasses import replace

from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.reconcile import (
    Activate,
    Add,
    Block,
    Facts,
    HandOver,
    Hold,
    MarkFailed,
    Refuse,
    Replace,
    Retire,
    RollBack,
    SlotFacts,
    Start,
    arrange,
    block,
    promote,
    roll_back,
    start_wave,
)

R, F = State.RUNNING, State.FAILED


def slot(key: str, state: State = R, digest: str = "", **more: object) -> SlotFacts:
    driver, _, version = key.partition("@")
    return replace(SlotFacts(driver, version, digest or f"d{version}", state), **more)


def slots(*members: SlotFacts) -> dict[str, SlotFacts]:
    return {s.key: s for s in members}


def test_a_first_bundle_gets_a_slot_that_is_no_candidate():
    facts = Facts(available={"a": {"1.0": "d1.0"}}, slots={})
    assert arrange(facts) == [Add("a@1.0", candidate=False)]
    assert arrange(Facts(available={"a": {"1.0": "d1.0"}}, slots=slots(slot("a@1.0")))) == []


def test_upgrade_adds_a_candidate_that_takes_over_once_running():
    available = {"a": {"1.0": "d1.0", "2.0": "d2.0"}}
    before = Facts(available, slots(slot("a@1.0")), active={"a": "1.0"})
    assert arrange(before) == [Add("a@2.0", candidate=True)]
    # Both stay wanted: the serving one until the new one has taken over.
    started = Facts(
        available, slots(slot("a@1.0"), slot("a@2.0", candidate=True)), active={"a": "1.0"}
    )
    assert arrange(started) == []
    assert promote(started) == [HandOver("a@1.0", "a@2.0")]
    # Still starting: nothing to promote yet.
    starting = Facts(
        available,
        slots(slot("a@1.0"), slot("a@2.0", State.STARTING, candidate=True)),
        active={"a": "1.0"},
    )
    assert promote(starting) == []


def test_after_the_handover_the_old_version_is_retired():
    available = {"a": {"1.0": "d1.0", "2.0": "d2.0"}}
    facts = Facts(available, slots(slot("a@1.0"), slot("a@2.0")), active={"a": "2.0"})
    assert arrange(facts) == [Retire("a@1.0", "not needed")]


def test_a_candidate_with_nothing_to_take_over_from_serves_at_once():
    facts = Facts({"a": {"2.0": "d2.0"}}, slots(slot("a@2.0", candidate=True)))
    assert promote(facts) == [Activate("a", "2.0")]


def test_a_pin_keeps_its_version_and_an_older_bundle_downgrades_nobody():
    available = {"a": {"1.0": "d1.0", "2.0": "d2.0"}}
    serving = slots(slot("a@2.0"))
    # Dropping an older version does not start it, let alone switch to it.
    assert arrange(Facts(available, serving, active={"a": "2.0"})) == []
    # A resource pinned to it does: a slot for 1.0, no candidate, and 2.0 keeps serving.
    pinned = Facts(available, serving, active={"a": "2.0"}, pinned=("a@1.0",))
    assert arrange(pinned) == [Add("a@1.0", candidate=False)]
    both = Facts(available, slots(slot("a@2.0"), slot("a@1.0")), active={"a": "2.0"})
    assert arrange(both) == [Retire("a@1.0", "not needed")]  # unpinned: retired
    assert arrange(replace(both, pinned=("a@1.0",))) == []
    # A pin to a version that is not installed asks for nothing.
    assert arrange(Facts(available, serving, active={"a": "2.0"}, pinned=("a@9.0",))) == []


def test_a_failed_candidate_is_marked_and_its_bundle_not_started_again():
    available = {"a": {"1.0": "d1.0", "2.0": "d2.0"}}
    facts = Facts(
        available,
        slots(slot("a@1.0"), slot("a@2.0", F, reason="no hello", candidate=True)),
        active={"a": "1.0"},
    )
    assert promote(facts) == [MarkFailed("a@2.0", "no hello")]
    # Recorded: 1.0 stays wanted and serving, 2.0 keeps its FAILED row.
    recorded = replace(facts, failed={"a@2.0": "d2.0"})
    assert arrange(recorded) == []
    # After a restart of the daemon: both get a slot again (2.0 shows FAILED).
    fresh = Facts(available, {}, failed={"a@2.0": "d2.0"})
    assert arrange(fresh) == [Add("a@2.0", candidate=False), Add("a@1.0", candidate=False)]
    # A new bundle of the failed version is tried again.
    fixed = Facts({"a": {"1.0": "d1.0", "2.0": "new"}}, {}, failed={"a@2.0": "d2.0"})
    assert arrange(fixed) == [Add("a@2.0", candidate=False)]


def test_rollback_on_probation_and_not_after_it():
    available = {"a": {"1.0": "d1.0", "2.0": "d2.0"}}
    looping = slot("a@2.0", State.FATAL, reason="exit 1", crash_loop_on_probation=True)
    facts = Facts(available, slots(looping), active={"a": "2.0"}, window_s=60)
    assert roll_back(facts, "a@2.0") == RollBack(
        "a@2.0", "rolled back: crash loop within 60s of taking over (exit 1)", "a@1.0"
    )
    later = Facts(available, slots(slot("a@2.0", State.FATAL)), active={"a": "2.0"})
    assert roll_back(later, "a@2.0") is None  # a later crash loop: FATAL, as for any driver
    alone = Facts({"a": {"2.0": "d2.0"}}, slots(looping), active={"a": "2.0"})
    assert roll_back(alone, "a@2.0") is None  # nothing older to serve
    older_failed = replace(facts, failed={"a@1.0": "d1.0"})
    assert roll_back(older_failed, "a@2.0") is None
    pinned_only = replace(facts, active={"a": "1.0"})
    assert roll_back(pinned_only, "a@2.0") is None  # it does not serve: nothing to roll back


def test_a_removed_bundle_retires_its_slot_and_another_running_version_serves():
    # 2.0's bundle went: 1.0 (running, pinned say) serves; b's bundle went entirely.
    facts = Facts(
        {"a": {"1.0": "d1.0"}},
        slots(slot("a@2.0"), slot("a@1.0"), slot("b@1.0")),
        active={"a": "2.0", "b": "1.0"},
    )
    assert arrange(facts) == [
        Activate("a", "1.0"),
        Retire("a@2.0", "not needed"),
        Activate("b", None),
        Retire("b@1.0", "bundle removed"),
    ]


def test_a_bundle_changed_in_place_is_held_or_replaced():
    available = {"a": {"1.0": "changed"}}
    running = slots(slot("a@1.0", digest="orig"))
    assert arrange(Facts(available, running, active={"a": "1.0"})) == [Hold("a@1.0")]
    reload = Facts(available, running, active={"a": "1.0"}, reload_same_version=True)
    assert arrange(reload) == [Replace("a@1.0", fresh=True)]


def test_content_a_replacement_failed_with_is_not_tried_again_until_it_changes():
    running = slots(slot("a@1.0", digest="orig", refused_digest="changed"))
    available = {"a": {"1.0": "changed"}}
    reload = Facts(available, running, active={"a": "1.0"}, reload_same_version=True)
    assert arrange(reload) == []
    newer = replace(reload, available={"a": {"1.0": "changed again"}})
    assert arrange(newer) == [Replace("a@1.0", fresh=True)]


def test_running_versions_with_stale_settings_are_replaced_unless_stopped_or_on_probation():
    facts = Facts(
        {"a": {"1.0": "d1.0"}, "b": {"1.0": "d1.0"}, "c": {"1.0": "d1.0"}},
        slots(
            slot("a@1.0", stale_settings=True),
            slot("b@1.0", stale_settings=True, held=True),
            slot("c@1.0", State.FATAL, stale_settings=True),
        ),
    )
    assert promote(facts) == [Replace("a@1.0", fresh=False)]
    assert promote(replace(facts, replacing=frozenset({"a@1.0"}))) == []


def test_a_wave_starts_what_is_down_blocks_what_lacks_a_requirement_and_refuses_past_the_limit():
    S = State
    facts = Facts(
        {},
        slots(
            slot("net@1", S.RUNNING),
            slot("a@1", S.STOPPED, requires=("net",)),
            slot("b@1", S.BLOCKED),
            slot("c@1", S.STOPPED, requires=("db",)),
            slot("d@1", S.STOPPED, held=True),
            slot("e@1", S.FATAL),
            slot("f@1", S.STOPPED),
        ),
    )
    wave = ["a", "b", "c", "d", "e", "f"]
    assert start_wave(facts, wave, holding=1, places=10) == [
        Start("a@1", reset=False),
        Start("b@1", reset=True),  # out of BLOCKED, forgetting past failures
        Block("c@1", "requires db, which is not running"),
        Start("f@1", reset=False),
    ]
    # Three places, one held by net: a and b start, f is refused (c is blocked anyway).
    assert start_wave(facts, wave, holding=1, places=3) == [
        Start("a@1", reset=False),
        Start("b@1", reset=True),
        Block("c@1", "requires db, which is not running"),
        Refuse("f@1"),
    ]


def test_the_plans_blocked_drivers_block_each_of_their_versions():
    facts = Facts({}, slots(slot("a@1"), slot("a@2"), slot("b@1")))
    assert block(facts, {"a": "requires cycle: a -> a"}) == [
        Block("a@1", "requires cycle: a -> a"),
        Block("a@2", "requires cycle: a -> a"),
    ]
