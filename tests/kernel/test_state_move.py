"""A resource's state and sockets move between real driver processes
(``state_move.move_state``), and nothing is lost when the move fails."""

from __future__ import annotations

import resource
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from drivebay.kernel.drivers.descriptors import raise_soft_limit
from drivebay.kernel.drivers.process import DriverProcess
from drivebay.kernel.drivers.state_move import move_state
from drivebay.protocol.errors import DriverStartError, HandoverFailed, OperationFailed
from tests.helpers import FAST, fixture_spec, run, started


def spec(tmp_path: Path, version: str, entry: str = "Stateful", **kw: Any) -> Any:
    return fixture_spec(tmp_path, "stateful", f"stateful:{entry}", version=version, **kw)


def ask(port: int) -> str:
    """The line the resource's listener answers a new connection with."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        return conn.makefile().readline().strip()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            return False
    except ConnectionRefusedError:
        return True


def journal(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def bump(proc: DriverProcess, resource: str = "r1") -> dict[str, Any]:
    facts: dict[str, Any] = await proc.call(resource, "bump", {})
    return facts


def test_state_and_listener_move_to_the_new_version_and_back(tmp_path: Path) -> None:
    notes = tmp_path / "journal"
    props = {"journal": str(notes)}

    async def main() -> None:
        async with started(spec(tmp_path, "1.0.0")) as old, started(spec(tmp_path, "2.0.0")) as new:
            await old.attach("r1", props)
            await bump(old)
            port = (await bump(old))["port"]
            assert ask(port) == "1.0.0 r1 3"
            await move_state(old, new, "r1", props, "1.0.0")
            facts = await bump(new)
            assert (facts["version"], facts["count"], facts["port"]) == ("2.0.0", 4, port)
            assert facts["from_version"] == "1.0.0" and facts["blocking"] is False
            assert ask(port) == "2.0.0 r1 5"
            with pytest.raises(OperationFailed, match="NotAttached"):
                await bump(old)
            # and back again (a rollback after this resource moved)
            await move_state(new, old, "r1", props, "2.0.0")
            assert ask(port) == "1.0.0 r1 6"
            assert (await bump(old))["from_version"] == "2.0.0"
        assert refused(port)  # every copy closed once both instances detached

    run(main())
    assert journal(notes) == [
        "1.0.0 r1 attach",
        "1.0.0 r1 handoff",
        "2.0.0 r1 takeover 1.0.0",
        "1.0.0 r1 detach",
        "2.0.0 r1 handoff",
        "1.0.0 r1 takeover 2.0.0",
        "2.0.0 r1 detach",
        "1.0.0 r1 detach",
    ]


def test_a_failed_takeover_leaves_the_old_instance_serving_on_its_socket(tmp_path: Path) -> None:
    notes = tmp_path / "journal"
    props = {"journal": str(notes)}
    failing = spec(tmp_path, "2.0.0", extra_env={"STATEFUL_FAIL_TAKEOVER": "r1"})

    async def main() -> None:
        async with started(spec(tmp_path, "1.0.0")) as old:
            await old.attach("r1", props)
            port = (await bump(old))["port"]
            async with started(failing) as new:
                with pytest.raises(HandoverFailed, match="configured to fail"):
                    await move_state(old, new, "r1", props, "1.0.0")
                assert ask(port) == "1.0.0 r1 2"
                assert (await bump(old))["count"] == 3
                with pytest.raises(OperationFailed, match="NotAttached"):
                    await bump(new)
            assert ask(port) == "1.0.0 r1 4"
        assert refused(port)  # the failed instance's copies were closed by its runtime

    run(main())
    assert journal(notes)[1:] == [
        "1.0.0 r1 handoff",
        "2.0.0 r1 takeover 1.0.0",
        "1.0.0 r1 handoff_aborted",
        "1.0.0 r1 detach",
    ]


def test_a_property_change_hands_over_inside_one_process(tmp_path: Path) -> None:
    async def main() -> None:
        async with started(spec(tmp_path, "1.0.0")) as proc:
            await proc.attach("r1", {})
            port = (await bump(proc))["port"]
            await move_state(proc, proc, "r1", {"journal": ""}, "1.0.0")
            assert ask(port) == "1.0.0 r1 2"
            assert (await bump(proc))["from_version"] == "1.0.0"

    run(main())


@pytest.fixture
def room_for_descriptors() -> Iterator[None]:
    """The soft descriptor limit raised to the hard one, as drivebayd raises
    its own at start (an ordinary user's soft limit is often 1,024, short of
    the 2,800 descriptors in transit), and put back after."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_soft_limit()
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4096:
        pytest.fail("this test needs a hard descriptor limit of 4,096 or more (ulimit -Hn)")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.mark.usefixtures("room_for_descriptors")
def test_more_descriptors_than_one_message_carries_arrive_in_chunks(tmp_path: Path) -> None:
    async def main() -> None:
        async with started(spec(tmp_path, "1.0.0")) as old, started(spec(tmp_path, "2.0.0")) as new:
            await old.attach("r1", {})
            # 2,803 descriptors: 12 messages of at most 253, both ways.
            assert await old.call("r1", "open_pairs", {"n": 1400}) == 1400
            await old.call("r1", "open_pipe", {"data": b"before"})  # files travel too
            await move_state(old, new, "r1", {}, "1.0.0")
            assert (await bump(new))["pairs"] == 1400
            assert await new.call("r1", "pair_works", {"index": 1399}) is True
            assert await new.call("r1", "pipe_read", {"n": 6}) == b"before"
            await move_state(new, old, "r1", {}, "2.0.0")
            assert await old.call("r1", "pair_works", {"index": 0}) is True

    run(main())


def test_a_process_without_room_for_the_descriptors_refuses_them_cleanly(tmp_path: Path) -> None:
    small = spec(tmp_path, "2.0.0", rlimits={"nofile": 64})

    async def main() -> None:
        async with started(spec(tmp_path, "1.0.0")) as old, started(small) as new:
            await old.attach("r1", {})
            await old.call("r1", "open_pairs", {"n": 40})
            with pytest.raises(HandoverFailed, match="holds 81 descriptors, and the process holds"):
                await move_state(old, new, "r1", {}, "1.0.0")
            assert await old.call("r1", "pair_works", {"index": 39}) is True
            # Under the limit alone, but not beside what the process holds
            # already: refused before sending where /proc tells the daemon what
            # it holds, else when the truncated message arrives (MSG_CTRUNC).
            await new.attach("r2", {})
            await new.call("r2", "open_pairs", {"n": 20})
            await old.attach("r3", {})
            await old.call("r3", "open_pairs", {"n": 10})
            with pytest.raises(HandoverFailed, match=r"open_files limit of 64; raise|MSG_CTRUNC"):
                await move_state(old, new, "r3", {}, "1.0.0")
            assert await old.call("r3", "pair_works", {"index": 9}) is True
            await new.detach("r2")
            await move_state(old, new, "r3", {}, "1.0.0")  # room again: it moves
            assert await new.call("r3", "pair_works", {"index": 9}) is True

    run(main())


def test_a_state_over_the_frame_limit_fails_with_one_clear_error(tmp_path: Path) -> None:
    big = spec(tmp_path, "1.0.0", max_frame=64 * 1024, extra_env={"STATEFUL_STATE_BYTES": "100000"})

    async def main() -> None:
        async with started(big) as old, started(spec(tmp_path, "2.0.0")) as new:
            await old.attach("r1", {})
            port = (await bump(old))["port"]
            with pytest.raises(HandoverFailed, match=r"StateTooLarge.*over the channel.s limit"):
                await move_state(old, new, "r1", {}, "1.0.0")
            assert ask(port) == "1.0.0 r1 2"

    run(main())


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("SyncHandoff", "SyncHandoff.handoff is not an async def"),
        ("TakeoverWithoutVersion", "takes the wrong parameters (it must take state, from_version)"),
    ],
)
def test_a_reserved_name_with_another_meaning_is_refused_at_load(
    tmp_path: Path, entry: str, words: str
) -> None:
    async def main() -> None:
        with pytest.raises(DriverStartError, match="HookMisdefined") as caught:
            async with started(spec(tmp_path, "1.0.0", entry)):
                pass
        assert words in str(caught.value)
        assert "\n" not in str(caught.value).split("; stderr")[0]

    run(main())


@pytest.mark.parametrize("hook", ["handoff", "takeover"])
def test_a_hook_past_its_deadline_is_cancelled_and_the_old_instance_serves_on(
    tmp_path: Path, hook: str
) -> None:
    notes = tmp_path / "journal"
    props = {"journal": str(notes), "hang_in": hook}
    quick = msgspec.structs.replace(FAST, call_s=0.5)

    async def main() -> None:
        async with (
            started(spec(tmp_path, "1.0.0"), quick) as old,
            started(spec(tmp_path, "2.0.0"), quick) as new,
        ):
            await old.attach("r1", props)
            port = (await bump(old))["port"]
            with pytest.raises(HandoverFailed, match=f"{hook} of r1 took longer than 0.5s"):
                await move_state(old, new, "r1", props, "1.0.0")
            assert ask(port) == "1.0.0 r1 2"
            with pytest.raises(OperationFailed, match="NotAttached"):
                await bump(new)

    run(main())
    # The hook has ended (cancelled) before the old instance takes over again.
    owner = "1.0.0" if hook == "handoff" else "2.0.0"
    assert journal(notes)[-3:] == [
        f"{owner} r1 {hook} cancelled",
        "1.0.0 r1 handoff_aborted",
        "1.0.0 r1 detach",
    ]
