"""The sans-I/O parts of a handover: sockets out of a state and back,
descriptor chunks and the inbox, the reserved hook names, the plan."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from drivebay.kernel.drivers.state_move import Plan, plan
from drivebay.protocol.fd_passing import (
    HEADER,
    MAX_FDS_PER_MESSAGE,
    FdInbox,
    FdTransferError,
    chunks,
    drain,
    send,
)
from drivebay.protocol.handoff_state import StateRefused, objects_from, put_objects, take_objects
from drivebay.protocol.hooks import LIFECYCLE_METHODS, HookMisdefined, check_hooks
from drivebay.protocol.runtime import Operations


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


# -- sockets out of a state and back --------------------------------------------


def test_sockets_become_paths_and_come_back_in_place() -> None:
    a, b = socket.socketpair()
    try:
        state = {"count": 3, "conns": [[a, b, b"left over"]], "by_port": {80: a}, "t": (b, 1)}
        plain, entries, sockets = take_objects(state)
        assert plain == {
            "count": 3,
            "conns": [[None, None, b"left over"]],
            "by_port": {80: None},
            "t": [None, 1],
        }
        assert sockets == [a, b]  # one descriptor per distinct socket
        unix = f"socket:{int(socket.AF_UNIX)}:{int(socket.SOCK_STREAM)}:0"  # blocking
        assert entries == [
            [unix, [["conns", 0, 0], ["by_port", 80]]],
            [unix, [["conns", 0, 1], ["t", 0]]],
        ]
        back = put_objects(plain, entries, ["A", "B"])  # type: ignore[list-item]
        assert back == {
            "count": 3,
            "conns": [["A", "B", b"left over"]],
            "by_port": {80: "A"},
            "t": ["B", 1],
        }
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda s: {"set": {s}}, "a socket is in a set at state['set']; use a list"),
        (lambda s: {s: 1}, "a socket is a dict key at state; use it as a value"),
        (
            lambda s: {"f": [open(os.devnull)]},  # noqa: SIM115 -- closed by the test
            "TextIOWrapper at state['f'][0] has a fileno() but cannot be handed over",
        ),
    ],
)
def test_what_cannot_be_handed_over_is_said_in_one_line(make: Any, words: str) -> None:
    sock, other = socket.socketpair()
    state = make(sock)
    try:
        with pytest.raises(StateRefused) as caught:
            take_objects(state)
        assert str(caught.value).startswith(words)
    finally:
        sock.close()
        other.close()
        for value in state.values() if isinstance(state, dict) else []:
            for item in value if isinstance(value, list) else []:
                item.close()


def test_a_socket_comes_back_as_it_was_without_asking_the_system() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    client = socket.create_connection(listener.getsockname())  # blocking
    made: list[Any] = []
    try:
        _, entries, _ = take_objects({"l": listener, "c": client})
        made = objects_from(entries, [os.dup(listener.fileno()), os.dup(client.fileno())])
        for thing, was in zip(made, [listener, client], strict=True):
            assert (thing.family, thing.type, thing.proto) == (was.family, was.type, was.proto)
            assert thing.getblocking() == was.getblocking()
            assert thing.getsockname() == was.getsockname()
        assert made[0].getblocking() is False
    finally:
        for thing in [listener, client, *made]:
            thing.close()


def test_a_closed_socket_is_refused() -> None:
    sock = socket.socket()
    sock.close()
    with pytest.raises(StateRefused, match=r"the socket at state\['s'\] is closed"):
        take_objects({"s": sock})


def test_unbuffered_files_travel_with_their_mode_and_buffered_ones_are_refused() -> None:
    read_end, write_end = os.pipe()
    reader = os.fdopen(read_end, "rb", buffering=0)
    writer = os.fdopen(write_end, "wb", buffering=0)
    made: list[Any] = []
    try:
        plain, entries, carried = take_objects({"pipe": [reader, writer]})
        assert carried == [reader, writer]
        assert plain == {"pipe": [None, None]}
        assert entries == [["file:rb", [["pipe", 0]]], ["file:wb", [["pipe", 1]]]]
        made = objects_from(entries, [os.dup(reader.fileno()), os.dup(writer.fileno())])
        state = put_objects(plain, entries, made)
        state["pipe"][1].write(b"kept")
        assert reader.read(4) == b"kept"  # the same pipe, through the copies
        with open(os.devnull, "rb") as buffered, pytest.raises(StateRefused, match="buffering=0"):
            take_objects({"log": buffered})
    finally:
        for thing in [reader, writer, *made]:
            thing.close()


def test_descriptors_that_are_not_what_the_entries_say_are_all_closed() -> None:
    fds = pipes(4)
    with pytest.raises(StateRefused, match="cannot be made an object again"):
        objects_from(
            [["file:rb", [["a"]]], ["socket", [["b"]]], ["socket", [["c"]]], ["socket", [["d"]]]],
            fds,
        )
    assert all(closed(fd) for fd in fds)
    fds = pipes(2)  # a kind naming the socket's family and type: still refused
    with pytest.raises(StateRefused, match="cannot be made an object again"):
        objects_from([["file:rb", [["a"]]], ["socket:2:1:6", [["b"]]]], fds)
    assert all(closed(fd) for fd in fds)


# -- chunks and the inbox -----------------------------------------------------------


def pipes(n: int) -> list[int]:
    fds: list[int] = []
    for _ in range(n // 2):
        fds.extend(os.pipe())
    return fds


def test_a_transfer_is_cut_into_messages_of_at_most_253_descriptors() -> None:
    fds = list(range(600))
    parts = list(chunks(7, fds))
    assert [len(part) for _, part in parts] == [MAX_FDS_PER_MESSAGE, MAX_FDS_PER_MESSAGE, 94]
    assert {HEADER.unpack(header) for header, _ in parts} == {(7, 600)}
    assert [fd for _, part in parts for fd in part] == fds
    assert list(chunks(7, [])) == []


def test_the_inbox_hands_out_a_whole_transfer_once() -> None:
    inbox = FdInbox()
    fds = pipes(6)
    inbox.add(1, 6, fds[:4])
    inbox.add(1, 6, fds[4:])
    assert inbox.take(1, 6) == fds
    assert inbox.held == 0
    for fd in fds:
        os.close(fd)


def test_a_truncated_or_incomplete_transfer_is_closed_and_refused() -> None:
    inbox = FdInbox()
    first, second = pipes(4), pipes(2)
    inbox.add(1, 6, first, truncated="MSG_CTRUNC")
    inbox.add(1, 6, second)  # arrives after: closed too
    with pytest.raises(FdTransferError, match="MSG_CTRUNC"):
        inbox.take(1, 6)
    assert all(closed(fd) for fd in first + second)
    partial = pipes(2)
    inbox.add(2, 4, partial)
    with pytest.raises(FdTransferError, match="2 of 4 descriptors arrived"):
        inbox.take(2, 4)
    assert all(closed(fd) for fd in partial)


def test_a_strict_inbox_keeps_only_what_it_expects_and_forgets_for_good() -> None:
    inbox = FdInbox(strict=True)
    stray, late = pipes(2), pipes(2)
    inbox.add(5, 2, stray)
    assert all(closed(fd) for fd in stray) and inbox.held == 0
    inbox.expect(6)
    inbox.forget(6)
    inbox.add(6, 2, late)
    assert all(closed(fd) for fd in late)
    kept = pipes(2)
    inbox.expect(7)
    inbox.add(7, 2, kept)
    inbox.close()
    assert all(closed(fd) for fd in kept)


# -- the reserved names and the plan ------------------------------------------------


class Good:
    @classmethod
    async def health(cls) -> dict[str, Any]:
        return {}

    def __init__(self, resource_id: str, properties: dict[str, Any]) -> None:
        pass

    def attach(self) -> None:
        pass

    async def handoff(self) -> dict[str, Any]:
        return {}

    async def takeover(self, state: dict[str, Any], from_version: str) -> None:
        pass

    async def resume(self) -> None:  # an operation, not a hook
        pass


def test_hooks_are_found_and_never_operations() -> None:
    assert check_hooks(Good) == ["handoff", "takeover"]
    assert set(Operations(Good).is_async) == {"resume"}
    assert {"handoff", "takeover", "handoff_aborted", "reconcile_operation"} <= LIFECYCLE_METHODS


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("handoff = 3", "Bad.handoff is not a method"),
        ("def handoff_aborted(self): pass", "Bad.handoff_aborted is not an async def"),
        ("async def takeover(self, state): pass", "Bad.takeover takes the wrong parameters"),
        ("async def detach(self, force): pass", "Bad.detach takes the wrong parameters"),
        ("async def handoff(self, *, now): pass", "Bad.handoff takes the wrong parameters"),
        (
            "async def reconcile_operation(self, op_id): pass",
            "Bad.reconcile_operation takes the wrong parameters",
        ),
        ("reconcile_operation = 'x'", "Bad.reconcile_operation is not a method"),
    ],
)
def test_a_reserved_name_with_another_meaning_is_refused(body: str, words: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"class Bad:\n    {body}\n", namespace)
    with pytest.raises(HookMisdefined) as caught:
        check_hooks(namespace["Bad"])
    assert str(caught.value).startswith(words)
    assert "is reserved for the lifecycle hook" in str(caught.value)


def test_none_says_a_subclass_has_no_such_hook() -> None:
    class Without(Good):
        takeover = None  # type: ignore[assignment]

    assert check_hooks(Without) == ["handoff"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ({"handoff"}, {"takeover"}, Plan.STATE),
        ({"handoff", "takeover"}, {"handoff", "takeover"}, Plan.STATE),
        ({"handoff"}, set(), Plan.DROP),
        (set(), {"takeover"}, Plan.ATTACH),
        ({"takeover"}, {"takeover"}, Plan.ATTACH),
        (set(), set(), Plan.ATTACH),
    ],
)
def test_the_plan_follows_the_hooks_of_both_sides(
    old: set[str], new: set[str], expected: Plan
) -> None:
    assert plan(old, new) is expected


def test_a_receiver_out_of_descriptors_sees_the_truncation_and_keeps_nothing() -> None:
    """Real ``recvmsg``: a process at its descriptor limit gets MSG_CTRUNC (the
    kernel drops what does not fit); ``drain`` fails the transfer, closes the rest."""
    import resource

    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sent = pipes(40)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inbox = FdInbox()
    try:
        sender.setblocking(False)
        receiver.setblocking(False)
        asyncio.run(send(sender, 9, sent))
        for fd in sent:  # in flight now: the sender's copies are not needed
            os.close(fd)
        in_use = {int(name) for name in os.listdir("/proc/self/fd")}
        free = [fd for fd in range(max(in_use) + 7) if fd not in in_use]
        limit = free[5]  # room for 5 new descriptors, not for 40
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            assert drain(receiver, inbox) is True
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert inbox.held == 0  # what did arrive was closed at once
        with pytest.raises(FdTransferError, match="MSG_CTRUNC"):
            inbox.take(9, 40)
    finally:
        sender.close()
        receiver.close()
