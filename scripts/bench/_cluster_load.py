"""The load of ``cluster.py`` and the ledger that judges it.

``Load`` runs ``callers`` tasks; caller ``c`` owns the resources ``c``,
``c + callers``, ... and calls ``record`` on them in turn, one call at a
time, so each resource has at most one call in flight and its calls are
made in the order of their sequence numbers. Caller ``c`` sends through
node ``c % len(nodes)`` over one of that node's connections; when a node's
connection fails (the node was killed), the caller moves to the next node
that runs, and its call in flight counts as *unknown* (it may or may not
have been accepted).

``check`` reads the ledger the driver wrote (``fixtures/cluster/ledger.py``,
one line per execution): *lost* are calls answered OK that never ran,
*duplicated* the runs of a call beyond its first (any call), *reordered* a
run of a resource's call after one made later (by the time each ran).
Calls answered with an error (``OutcomeUnknown`` for one a dead owner had
sent) and calls cut by a node's death are counted by type; they are not
lost when they never ran, but a second run of any call is a duplicate.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _cluster_nodes import Node

from drivebay.client import AsyncClient, ConnectionLost, DaemonUnavailable

CONNECTIONS_PER_NODE = 4
UNKNOWN = (ConnectionLost, DaemonUnavailable, ConnectionError, OSError)


class Gateway:
    """Connections to the nodes: ``CONNECTIONS_PER_NODE`` each, opened on demand."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        self._clients: dict[tuple[str, int], AsyncClient] = {}
        self._opening: dict[tuple[str, int], asyncio.Lock] = {}

    async def client(self, node: Node, slot: int) -> AsyncClient:
        key = (node.name, slot % CONNECTIONS_PER_NODE)
        async with self._opening.setdefault(key, asyncio.Lock()):
            found = self._clients.get(key)
            if found is None:
                found = self._clients[key] = await AsyncClient.connect(node.socket)
            return found

    async def drop(self, node: Node) -> None:
        """Forget ``node``'s connections (it was killed or restarted)."""
        for key in [k for k in self._clients if k[0] == node.name]:
            client = self._clients.pop(key, None)  # another caller may have dropped it
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    async def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()


@dataclass
class Issued:
    """Every call made: ``resources[n]``, ``seqs[n]`` and ``outcome[n]`` of call number n."""

    resources: list[str] = field(default_factory=list)
    seqs: array.array[int] = field(default_factory=lambda: array.array("q"))
    outcome: bytearray = field(default_factory=bytearray)  # 0 pending, 1 OK, 2 failed, 3 unknown
    failures: list[str] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)  # by type

    def make(self, resource: str, seq: int) -> int:
        self.resources.append(resource)
        self.seqs.append(seq)
        self.outcome.append(0)
        return len(self.resources) - 1


class Load:
    """Callers keeping one call in flight on each of ``callers`` resources at a time."""

    def __init__(self, gateway: Gateway, resources: Sequence[str], callers: int) -> None:
        self.gateway = gateway
        self.issued = Issued()
        self.starts = array.array("d")  # perf_counter at each answered call's start
        self.latencies = array.array("d")  # seconds, of calls answered OK
        self.stop = asyncio.Event()
        self._shares = [list(resources[c::callers]) for c in range(min(callers, len(resources)))]
        self._seqs = dict.fromkeys(resources, 0)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for number, share in enumerate(self._shares):
                group.create_task(self._caller(number, share))

    def _route(self, wanted: int) -> Node | None:
        nodes = self.gateway.nodes
        for shift in range(len(nodes)):
            node = nodes[(wanted + shift) % len(nodes)]
            if node.running:
                return node
        return None

    async def _caller(self, number: int, share: list[str]) -> None:
        clock, issued, where = time.perf_counter, self.issued, number
        turn = 0
        while not self.stop.is_set():
            node = self._route(where)
            if node is None:
                await asyncio.sleep(0.05)
                continue
            try:
                client = await self.gateway.client(node, number // len(self.gateway.nodes))
            except UNKNOWN:  # no connection: nothing was sent, the caller moves on
                await self.gateway.drop(node)
                where += 1
                await asyncio.sleep(0.01)
                continue
            resource = share[turn % len(share)]
            turn += 1
            self._seqs[resource] += 1
            n = issued.make(resource, self._seqs[resource])
            start = clock()
            try:
                await client.call(resource, "record", {"number": n, "seq": self._seqs[resource]})
            except UNKNOWN as exc:
                issued.outcome[n] = 3
                issued.errors[type(exc).__name__] += 1
                await self.gateway.drop(node)
                where += 1  # try the next node
                await asyncio.sleep(0.01)
                continue
            except Exception as exc:
                issued.outcome[n] = 2
                issued.errors[getattr(exc, "type", "") or type(exc).__name__] += 1
                issued.failures.append(f"{resource} call {n}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)  # no spinning on a setup that refuses every call
                continue
            issued.outcome[n] = 1
            self.starts.append(start)
            self.latencies.append(clock() - start)

    def window(self, start: float, end: float) -> tuple[int, list[float]]:
        """(calls answered OK that started in [start, end), their latencies sorted)."""
        latencies = sorted(
            latency
            for began, latency in zip(self.starts, self.latencies, strict=True)
            if start <= began < end
        )
        return len(latencies), latencies


@dataclass(frozen=True)
class LedgerCheck:
    made: int
    answered_ok: int
    failed: int  # answered with an error
    unknown: int  # the node died with the call in flight
    ran: int  # distinct calls the ledger shows
    lost: int  # answered OK, never ran
    duplicated: int  # runs beyond a call's first
    reordered: int  # a run after a later call of the same resource had run
    unexplained: int  # ledger lines naming no call made
    reconciled: int  # runs the driver's reconcile_operation made (the device never saw the call)
    errors: dict[str, int]  # answers that were errors, and calls cut, by type
    first_failures: list[str]


def check(ledger: Path, issued: Issued) -> LedgerCheck:
    made = len(issued.resources)
    runs = bytearray(made)
    by_resource: dict[str, list[tuple[int, int]]] = {}
    unexplained = duplicated = reconciled = 0
    text = ledger.read_bytes().decode() if ledger.exists() else ""
    for line in text.splitlines():
        number, seq, resource, node, _op_id, at = line.split()
        n = int(number)
        if not 0 <= n < made or issued.resources[n] != resource or issued.seqs[n] != int(seq):
            unexplained += 1
            continue
        duplicated += runs[n] > 0
        reconciled += node.endswith("/reconcile")
        runs[n] = min(runs[n] + 1, 255)
        by_resource.setdefault(resource, []).append((int(at), int(seq)))
    reordered = 0
    for entries in by_resource.values():
        entries.sort()
        top = 0
        for _, ran_seq in entries:
            reordered += ran_seq < top
            top = max(top, ran_seq)
    ok = [n for n in range(made) if issued.outcome[n] == 1]
    return LedgerCheck(
        made=made,
        answered_ok=len(ok),
        failed=issued.outcome.count(2),
        unknown=issued.outcome.count(3),
        ran=made - runs.count(0),
        lost=sum(1 for n in ok if runs[n] == 0),
        duplicated=duplicated,
        reordered=reordered,
        unexplained=unexplained,
        reconciled=reconciled,
        errors=dict(issued.errors),
        first_failures=issued.failures[:3],
    )
