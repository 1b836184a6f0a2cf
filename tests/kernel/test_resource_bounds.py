"""The pure rules behind the control socket's bounds and the descriptor
budget: no processes, no sockets."""

from __future__ import annotations

import resource

import pytest

from drivebay.kernel.config import load_config
from drivebay.kernel.control.limits import SMALL_REQUEST, ConnectionGate, RequestBudget, wanted
from drivebay.kernel.drivers.descriptors import (
    FDS_PER_PROCESS,
    RESERVED_FDS,
    current_limit,
    descriptor_budget,
    open_files_over,
    places_held,
    raise_soft_limit,
)
from drivebay.kernel.drivers.lifecycle import State
from drivebay.protocol.frames import HEADER, FrameSplitter


def test_the_gate_admits_up_to_its_cap_and_again_after_a_leave():
    gate = ConnectionGate(2)
    assert gate.enter() and gate.enter()
    assert not gate.enter() and gate.open == 2  # a refusal counts nothing
    gate.leave()
    assert gate.enter()
    assert gate.refusal == (
        "drivebayd has 2 client connections open (control socket and HTTP API together: "
        "control.max_connections); close idle clients or raise control.max_connections"
    )
    assert "descriptor limit 1024 (RLIMIT_NOFILE)" in ConnectionGate(120, 1024).refusal


def test_the_budget_takes_what_is_left_and_no_more():
    budget = RequestBudget(64)
    assert budget.take(40) and not budget.take(30) and budget.take(24)
    budget.give(40)
    assert budget.in_use == 24 and budget.take(40)
    assert "control.request_buffer_mb" in budget.refusal(30)


def test_small_requests_need_no_budget():
    assert wanted(0) == 0 and wanted(SMALL_REQUEST) == 0
    assert wanted(SMALL_REQUEST + 1) == SMALL_REQUEST + 1


@pytest.mark.parametrize(
    ("limit", "spare", "drivers", "connections", "capped"),
    [
        (1024, True, 70, 120, True),
        (1024, False, 140, 120, True),
        (256, True, 14, 24, True),
        (4096, True, 294, 504, True),
        (524288, True, 43642, 512, False),
        (10, True, 0, 1, True),
    ],
)
def test_the_descriptor_budget(limit, spare, drivers, connections, capped):
    budget = descriptor_budget(limit, 512, spare)
    assert (budget.drivers, budget.connections, budget.connections_capped) == (
        drivers,
        connections,
        capped,
    )
    used = RESERVED_FDS + budget.connections + budget.drivers * budget.per_driver
    assert used <= max(limit, RESERVED_FDS + 1)  # everything fits under the limit
    assert budget.admits(drivers - 1) and not budget.admits(drivers)


def test_the_budget_says_what_it_allows_and_how_to_get_more():
    budget = descriptor_budget(1024, 512, True)
    assert budget.per_driver == 2 * FDS_PER_PROCESS
    assert budget.summary() == (
        "descriptor limit 1024 (RLIMIT_NOFILE): room for 70 driver versions "
        "(12 descriptors each) and 120 control connections"
    )
    assert budget.refusal().startswith(
        "not started: the descriptor limit 1024 (RLIMIT_NOFILE) allows 70 driver versions; "
        "raise LimitNOFILE"
    )


def test_a_lower_max_connections_leaves_more_to_drivers():
    assert descriptor_budget(1024, 10, True).drivers == (1024 - RESERVED_FDS - 10) // 12


def test_which_states_hold_a_place():
    held = [State.RUNNING, State.STARTING, State.BUILDING, State.BACKOFF, State.FATAL]
    free = [State.STOPPED, State.BLOCKED, State.INVALID, State.FAILED]
    assert places_held(held + free) == len(held)


def test_raising_the_soft_limit_reaches_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 512)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        before, after, top = raise_soft_limit()
        assert before == lower and after == top == current_limit()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_announced_size_is_known_from_the_prefix_a_byte_at_a_time():
    splitter = FrameSplitter("peer")
    data = HEADER.pack(3) + b"abc" + HEADER.pack(100_000) + b"xy"
    seen = []
    for byte in data:
        splitter.feed(bytes([byte]))
        seen.append(splitter.announced)
    assert seen[:3] == [0, 0, 0] and seen[3:7] == [3, 3, 3, 0]
    assert seen[7:10] == [0, 0, 0] and seen[10:] == [100_000] * 3
    assert splitter.pending == 6


def test_open_files_settings_above_the_hard_limit_are_named():
    config = load_config(
        None,
        {"drivers": {"a": {"limits": {"open_files": 100}}, "b": {"limits": {"open_files": 300}}}},
    )
    assert open_files_over(config, 256) == [
        "limits.open_files: 1024 is above drivebayd's hard descriptor limit 256, which a "
        "driver cannot raise: its drivers fail to start; lower it, or raise LimitNOFILE",
        "drivers.b.limits.open_files: 300 is above drivebayd's hard descriptor limit 256, "
        "which a driver cannot raise: its drivers fail to start; lower it, or raise LimitNOFILE",
    ]
    assert open_files_over(config, 1024) == []
