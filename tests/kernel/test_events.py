"""The event ring without processes: ids, gaps (lost id, other boot, a slow
reader), since=0, waiting readers, resizing, and what a lifecycle move emits."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import pytest

from drivebay.kernel.control.schema import (
    CallRequest,
    Event,
    RepoAddRequest,
    ResourceAddRequest,
    ShutdownRequest,
)
from drivebay.kernel.drivers.lifecycle import Event as Move
from drivebay.kernel.drivers.lifecycle import Lifecycle, State
from drivebay.kernel.events import AUDITED, BadEventId, EventLog, audit_what, driver_moved
from tests.helpers import run


def ring(size: int = 5, boot: str = "b00t") -> EventLog:
    ticks = itertools.count(1000)
    return EventLog(size, clock=lambda: float(next(ticks)), boot=boot)


def emit(log: EventLog, count: int) -> list[Event]:
    return [log.emit("resource.added", resource=f"r{n}") for n in range(count)]


def ids(events: list[Event]) -> list[str | None]:
    return [event.id for event in events]


def test_ids_carry_the_boot_and_grow_by_one():
    log = ring()
    first, second = emit(log, 2)
    assert (first.id, second.id) == ("b00t-1", "b00t-2")
    assert first.time < second.time
    assert EventLog(5).boot != EventLog(5).boot  # random at every start


def test_since_0_is_everything_the_ring_holds_and_none_is_only_what_comes():
    log = ring(size=3)
    emit(log, 5)
    assert ids(log.cursor("0").take()) == ["b00t-3", "b00t-4", "b00t-5"]
    later = log.cursor(None)
    assert later.take() == []
    emit(log, 1)
    assert ids(later.take()) == ["b00t-6"]


def test_since_an_id_gives_what_came_after_it_and_last_only_the_newest():
    log = ring()
    emit(log, 4)
    assert ids(log.cursor("b00t-2").take()) == ["b00t-3", "b00t-4"]
    assert log.cursor("b00t-4").take() == []
    assert ids(log.cursor("0", last=1).take()) == ["b00t-4"]


def test_an_id_the_ring_no_longer_holds_gives_a_gap_never_a_silent_skip():
    log = ring(size=3)
    emit(log, 6)  # holds 4, 5, 6
    gap, *rest = log.cursor("b00t-1").take()
    assert gap.type == "gap" and gap.id is None
    assert gap.data["missed"] == 2 and gap.data["after"] == "b00t-1"
    assert "no longer holds 2 events after b00t-1" in gap.data["reason"]
    assert ids(rest) == ["b00t-4", "b00t-5", "b00t-6"]
    assert log.cursor("b00t-3").take()[0].type != "gap"  # 4 onwards is all there


def test_an_id_of_another_boot_gives_a_gap_then_this_boot_s_events():
    before = ring(boot="0ld")
    emit(before, 2)
    log = ring(boot="n3w")
    emit(log, 2)
    gap, *rest = log.cursor(before.event_id(2)).take()
    assert gap.type == "gap" and gap.data["missed"] is None
    assert "another run of drivebayd" in gap.data["reason"]
    assert ids(rest) == ["n3w-1", "n3w-2"]


@pytest.mark.parametrize("since", ["", "b00t", "b00t-x", "-3", "b00t-1e3", "b00t-٣", "b00t-9"])
def test_a_malformed_or_future_id_is_the_client_s_error(since):
    log = ring()
    emit(log, 2)
    with pytest.raises(BadEventId) as caught:
        log.cursor(since)
    assert caught.value.exit_code == 2


def test_a_slow_reader_gets_a_gap_and_resumes_from_the_ring_without_holding_anyone_up():
    log = ring(size=4)
    slow, quick = log.cursor(None), log.cursor(None)
    for _ in range(10):  # the writer never waits for readers
        event = log.emit("driver.state", driver="alpha")
        assert quick.take() == [event]
    gap, *rest = slow.take()
    assert gap.type == "gap" and gap.data["missed"] == 6
    assert "fell behind" in gap.data["reason"]
    assert ids(rest) == ["b00t-7", "b00t-8", "b00t-9", "b00t-10"]
    assert slow.take() == []


def test_take_with_a_limit_goes_on_where_it_stopped():
    log = ring(size=10)
    emit(log, 5)
    cursor = log.cursor("0")
    assert ids(cursor.take(2)) == ["b00t-1", "b00t-2"]
    assert ids(cursor.take()) == ["b00t-3", "b00t-4", "b00t-5"]


def test_waiting_readers_wake_on_an_event_and_time_out_in_silence():
    async def scenario() -> None:
        log = ring()
        cursor = log.cursor(None)
        assert await cursor.wait(0.01) is False  # silence: time for a heartbeat
        waiting = asyncio.ensure_future(cursor.wait(5))
        cancelled = asyncio.ensure_future(log.cursor(None).wait(5))
        await asyncio.sleep(0)
        cancelled.cancel()  # one reader going away leaves the others waiting
        await asyncio.sleep(0)
        log.emit("audit", data={"who": "uid 0", "what": "stop", "outcome": "ok"})
        assert await waiting is True
        assert cursor.take()[0].type == "audit"

    run(scenario())


def test_subscribe_yields_held_then_new_events_and_checks_since_at_once():
    async def scenario() -> list[str | None]:
        log = ring()
        emit(log, 2)
        with pytest.raises(BadEventId):
            log.subscribe("nonsense")
        stream = log.subscribe("0")
        got = [await anext(stream), await anext(stream)]
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        log.emit("update.available", driver="alpha", version="2.0")
        got.append(await asyncio.wait_for(pending, 5))
        await stream.aclose()  # type: ignore[attr-defined]
        return ids(got)

    assert run(scenario()) == ["b00t-1", "b00t-2", "b00t-3"]


def test_resizing_keeps_the_newest_and_later_ids_go_on():
    log = ring(size=5)
    emit(log, 5)
    log.resize(2)
    assert ids(log.held()) == ["b00t-4", "b00t-5"]
    log.resize(4)
    emit(log, 1)
    assert ids(log.held()) == ["b00t-4", "b00t-5", "b00t-6"]
    assert log.cursor("b00t-2").take()[0].data["missed"] == 1


def test_an_event_s_json_is_the_schema_s():
    log = ring()
    event = log.emit("driver.state", driver="alpha", version="1.0", data={"to": "RUNNING"})
    decoded = msgspec.json.decode(msgspec.json.encode(event), type=Event)
    assert decoded == event
    assert msgspec.to_builtins(event)["resource"] is None


def test_a_move_after_a_kill_emits_the_state_the_signal_and_a_restart():
    log = ring(size=20)
    lifecycle = Lifecycle(
        "alpha@1.0", on_move=lambda move: driver_moved(log, "alpha", "1.0", move, 1, None)
    )
    lifecycle.fire(Move.SPAWN)
    lifecycle.fire(Move.UP, "pid 7")
    lifecycle.fire(Move.SPAWN, "", exit_code=-9)
    lifecycle.fire(Move.GIVE_UP, "crash loop", exit_code=3)
    spawn, up, again, restart, fatal_state, fatal = log.held()
    assert (spawn.type, spawn.data["from"], spawn.data["to"]) == (
        "driver.state",
        "STOPPED",
        "STARTING",
    )
    assert up.data["to"] == "RUNNING" and "signal" not in up.data
    assert again.data["signal"] == 9 and again.data["signal_name"] == "SIGKILL"
    assert restart.type == "driver.restart" and restart.data["restarts"] == 1
    assert fatal_state.data["exit_status"] == 3
    assert fatal.type == "driver.fatal" and fatal.data["reason"] == "crash loop"
    assert lifecycle.state is State.FATAL


def test_an_audit_line_names_the_request_without_property_values(caplog):
    added = ResourceAddRequest("r1", "alpha", None, ["password=hunter2", "size:=3"])
    assert (
        audit_what(added) == "resource-add id='r1' driver='alpha' assignments=['password', 'size']"
    )
    root = audit_what(RepoAddRequest("acme", "https://example.org/", "x" * 500))
    assert root == "repo-add name='acme' url='https://example.org/' root=<502 characters>"
    assert CallRequest not in AUDITED and ShutdownRequest in AUDITED
    log = ring()
    with caplog.at_level("INFO", logger="drivebay.audit"):
        event = log.audit("pid 7 uid 1000", audit_what(added), "ok")
    assert event.type == "audit" and event.data["outcome"] == "ok"
    assert "pid 7 uid 1000: resource-add id='r1'" in caplog.text
    assert "hunter2" not in caplog.text
