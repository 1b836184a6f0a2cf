"""Load for ``chaos.py``: calls numbered per resource, their answers, the ledger check.

Every call is numbered twice: an op id over the whole attack and a sequence
number per resource, both in the order the calls are made. Each resource's
calls go over one connection, so the daemon receives them in that order.
The driver writes a ledger line for every operation it runs, before it
answers (``fixtures/chaos/chaos.py``); ``check_ledger`` compares the ledger
with the answers: an operation run twice is *duplicated*, one run after a
later call of its resource is *reordered*, one answered OK without a line is
*OK but not executed*. A call with no answer at all within its deadline and
a grace is *never answered*.
"""

from __future__ import annotations

import array
import asyncio
import collections
import itertools
from dataclasses import dataclass
from pathlib import Path

from drivebay.client import AsyncClient, OperationError

PENDING, OK, FAILED = 0, 1, 2
GRACE_S = 5.0  # past a call's own deadline, before it counts as never answered


def error_type(message: str, code: int | None = None) -> str:
    """The type an error answer names (``DriverCrashed: ...``), else ``Error`` and
    drivebayctl's exit code."""
    head = message.split(":", 1)[0]
    if head.isidentifier():
        return head
    if code == 4:
        return "NoSuchName"
    return f"Error{code}"


class Tally:
    """Every call of one attack: (resource, seq) per op id, and how it was answered."""

    def __init__(self, resources: list[str]) -> None:
        self.resources = resources
        self._index = {resource: n for n, resource in enumerate(resources)}
        self._seqs = {resource: itertools.count(1) for resource in resources}
        self.resource_of = array.array("I")
        self.seq_of = array.array("Q")
        self.outcome = bytearray()
        self.errors: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self.outcome)

    def next(self, resource: str) -> tuple[int, int]:
        seq = next(self._seqs[resource])
        self.resource_of.append(self._index[resource])
        self.seq_of.append(seq)
        self.outcome.append(PENDING)
        return len(self.outcome) - 1, seq

    def answered(self, op_id: int, error: str | None) -> None:
        if error is None:
            self.outcome[op_id] = OK
        else:
            self.outcome[op_id] = FAILED
            self.errors[error] += 1

    def count(self, outcome: int) -> int:
        return self.outcome.count(outcome)


class Load:
    """Callers keeping ``per_resource`` calls in flight on every resource.

    A caller whose connection is lost (the daemon died) waits for
    ``resume(clients)`` before its next call.
    """

    def __init__(
        self,
        tally: Tally,
        clients: list[AsyncClient],
        per_resource: int,
        op: str = "record",
        timeout: float = 10.0,
    ) -> None:
        self.tally = tally
        self._clients = clients
        self._per_resource = per_resource
        self._op = op
        self._timeout = timeout
        self._stop = asyncio.Event()
        self._resumed = asyncio.Event()  # replaced, once set, by each resume

    def client_of(self, resource: str) -> AsyncClient:
        """The connection ``resource``'s calls go over."""
        index = self.tally.resources.index(resource)
        return self._clients[index % len(self._clients)]

    @property
    def clients(self) -> list[AsyncClient]:
        return self._clients

    def resume(self, clients: list[AsyncClient]) -> None:
        """Go on over new connections (the callers whose connection was lost wait for this)."""
        self._clients = clients
        resumed, self._resumed = self._resumed, asyncio.Event()
        resumed.set()

    def stop(self) -> None:
        self._stop.set()
        self._resumed.set()

    async def run(self) -> None:
        """Until ``stop``; then waits for the calls in flight, up to their
        deadline and ``GRACE_S``: those still unanswered stay PENDING."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._caller(n, resource))
            for n, resource in enumerate(self.tally.resources)
            for _ in range(self._per_resource)
        ]
        try:
            await self._stop.wait()
            await asyncio.wait(tasks, timeout=self._timeout + GRACE_S)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _caller(self, n: int, resource: str) -> None:
        tally, stop = self.tally, self._stop
        while not stop.is_set():
            resumed = self._resumed
            client = self._clients[n % len(self._clients)]
            op_id, seq = tally.next(resource)
            args = {"number": op_id, "seq": seq}
            try:
                await client.call(resource, self._op, args, timeout=self._timeout)
            except OperationError as exc:
                tally.answered(op_id, error_type(str(exc), exc.code))
            except ConnectionError:
                tally.answered(op_id, "ConnectionLost")
                await resumed.wait()
            else:
                tally.answered(op_id, None)


@dataclass(frozen=True)
class LedgerCheck:
    ran: int  # distinct operations in the ledger
    duplicated: int  # runs beyond an operation's first
    reordered: int  # ran after a later call of its resource
    ok_not_executed: int  # answered OK, no ledger line
    unknown: int  # a line naming an operation not made (or not so)


def check_ledger(path: Path, tally: Tally) -> LedgerCheck:
    runs = bytearray(len(tally))
    top: dict[str, int] = {}
    duplicated = reordered = unknown = 0
    text = path.read_bytes().decode(errors="replace") if path.exists() else ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 4 or not fields[0].isdigit() or not fields[1].isdigit():
            unknown += 1
            continue
        op_id, seq, resource = int(fields[0]), int(fields[1]), fields[2]
        if (
            op_id >= len(tally)
            or tally.seq_of[op_id] != seq
            or tally.resources[tally.resource_of[op_id]] != resource
        ):
            unknown += 1
            continue
        duplicated += runs[op_id] > 0
        runs[op_id] = min(runs[op_id] + 1, 255)
        reordered += seq < top.get(resource, 0)
        top[resource] = max(top.get(resource, 0), seq)
    ok_not_executed = sum(
        1 for outcome, ran in zip(tally.outcome, runs, strict=True) if outcome == OK and not ran
    )
    return LedgerCheck(len(tally) - runs.count(0), duplicated, reordered, ok_not_executed, unknown)
