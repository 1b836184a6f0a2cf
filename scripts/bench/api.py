"""HTTP API benchmark: the HTTP API against the control socket and supervisord's XML-RPC.

Run with the project venv, from the repository root, after compiling the
project's bytecode (``scripts/test`` does the same)::

    .venv/bin/python -m compileall -q kernel sandbox protocol
    .venv/bin/python scripts/bench/api.py [--quick] [--json]

Daemons, with default settings but for their paths:

- *drivebayd* with 50 drivers (10 with ``--quick``): the ledger driver of
  ``upgrade.py`` with 64 resources, and idle bundles of ``supervise.py``;
- *supervisord* with as many programs (``supervise.py``'s), beside it;
- after those, for (d), a drivebayd per run with the ledger driver and 64
  resources only, ``metrics: {enabled: true}`` or ``false``.

Figures, from this process on uvloop:

(a) status: the median ms of one status of every driver, asked in turn
    (interleaved, after a warm-up) as ``GET /v1/drivers`` on ``http.sock``
    (aiohttp's client, one kept-alive connection), as ``status`` over the
    control socket (``AsyncClient``), and as supervisord's XML-RPC
    ``getAllProcessInfo``.
(b) calls/s: 64 callers, one per resource, each calling the ledger's
    ``whoami`` back to back, over HTTP (``POST
    /v1/resources/{id}/calls/whoami`` on the Unix socket) with two clients,
    and over the control socket (``AsyncClient``, the project's own lean
    msgpack client, 64 calls in flight on one connection):

    - *lean HTTP client* (``LeanHttp``): HTTP/1.1 on asyncio streams, 64
      kept-alive connections, one request at a time on each (no
      pipelining), the request's bytes made once. The target is judged on
      this one: the control socket is measured with a lean client of ours,
      so lean against lean compares the daemon's two paths rather than two
      client libraries; a platform calls with its own HTTP client (Java's),
      not with Python's aiohttp.
    - *aiohttp's client* (a ``ClientSession``, a kept-alive connection per
      caller): shown beside it, since a Python caller may use it; it spends
      more CPU per call than the daemon does, on the CPUs the daemon shares.

    And the floor: both HTTP clients against aiohttp's web server alone (a
    child process on uvloop, one route answering a fixed body);
    windows of each in turn, the median of the windows; CPU µs per call of
    drivebayd, of this process and of the driver.
(c) events/s: 10 SSE clients (``GET /v1/events``, ``Accept:
    text/event-stream``) while 16 tasks add and remove a resource each, in a
    loop, over the control socket (``resource-add``, ``resource-rm``: a
    ``resource.added`` or ``resource.removed`` event and an audit event each);
    every event must reach every client (no gap). Events
    delivered per second: the events times 10 clients over the time from the
    first change to the last event received.
(d) metrics: the calls/s of (b) over the control socket, metrics on and
    off, 5 runs each (3 with ``--quick``) in the order on, off, off, on, ...,
    each run a fresh daemon and one window; median and range, and
    drivebayd's CPU µs per call.

``--calls`` runs (b) alone, against a drivebayd with the ledger only (no
idle drivers, no supervisord): a shorter run, for comparing calls/s while
other work loads the machine; ``--json`` then holds the calls' keys only.

``--json`` ends with one object: ``http_status_ms``, ``ctl_status_ms``,
``xmlrpc_status_ms``, ``http_calls_per_s`` (the lean client),
``http_aiohttp_calls_per_s``, ``ctl_calls_per_s``, ``floor_http_calls_per_s``
(lean), ``floor_http_aiohttp_calls_per_s``,
``sse_events_per_s`` (delivered), ``sse_events_made_per_s``,
``metrics_on_calls_per_s``, ``metrics_off_calls_per_s``, the ratios the targets
use, ``cpu_us_per_call``, ``targets``, ``machine``. Every process started here
is stopped and reaped, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import aiohttp
import metrics_overhead
import msgspec
import supervise
import upgrade

from drivebay.client import AsyncClient

CALLERS = 64  # calls in flight, one per resource
SSE_CLIENTS = 10
CHANGERS = 16  # resource-add/rm loops while the SSE clients read
DRAIN_S = 30.0  # for the last events to reach every SSE client
URL = "http://localhost"  # the host is not used on a Unix socket


@dataclass(frozen=True)
class Plan:
    drivers: int  # of the big drivebayd (the ledger and idle ones) and supervisord's programs
    status_requests: int  # per transport
    rounds: int  # windows of each transport for calls/s
    metrics_runs: int  # windows of each setting
    warmup_s: float
    window_s: float
    sse_s: float  # how long the properties change


FULL = Plan(50, 200, 5, 5, 0.5, 2.0, 3.0)
QUICK = Plan(10, 50, 3, 3, 0.3, 1.0, 1.5)


# -- daemons -----------------------------------------------------------------------------


def http_socket(daemon: upgrade.Daemon) -> str:
    return str(daemon.root / "state" / "http.sock")


@contextlib.asynccontextmanager
async def drivebayd(root: Path, envs_dir: Path, idle: int, metrics: bool) -> AsyncIterator[Any]:
    """drivebayd with the ledger driver and ``idle`` idle drivers RUNNING, and
    CALLERS ledger resources (r00 ...)."""
    async with upgrade.drivebayd(root, envs_dir, metrics) as daemon:
        staging, drivers = root / "idle-staging", root / "drivers"
        staging.mkdir()
        for number in range(idle):  # a finished bundle is moved in at once
            bundle = supervise.write_bundle(staging, f"idle-{number:02d}")
            os.rename(bundle, drivers / bundle.name)
        await upgrade.add_resources([daemon.admin], resources(), CALLERS)

        async def all_running() -> bool:
            rows = await daemon.admin.request("status")
            broken = [r for r in rows if r["state"] in ("FAILED", "FATAL", "INVALID", "BLOCKED")]
            if broken:
                raise RuntimeError(f"drivebayd: {broken[0]['name']}: {broken[0]}")
            return len(rows) == idle + 1 and all(r["state"] == "RUNNING" for r in rows)

        await upgrade.settle(all_running, 300, f"drivebayd: {idle + 1} drivers RUNNING")
        yield daemon


def resources() -> list[str]:
    return upgrade.resource_ids("r", CALLERS)


@contextlib.asynccontextmanager
async def http_session(path: str, limit: int) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.UnixConnector(path, limit=limit)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@contextlib.contextmanager
def supervisord_running(root: Path, programs: int) -> Any:
    names = [f"idle-{number:02d}" for number in range(programs)]
    with supervise.supervisord(root, names) as fleet:
        yield fleet


# -- (a) status --------------------------------------------------------------------------


async def status_ms(
    daemon: upgrade.Daemon, xmlrpc: supervise.Supervisord, plan: Plan
) -> dict[str, list[float]]:
    """Each way's status times in ms, interleaved (the order rotating), after 10 of each."""
    async with http_session(http_socket(daemon), 1) as session:

        async def http() -> int:
            async with session.get(f"{URL}/v1/drivers") as response:
                if response.status != 200:
                    raise RuntimeError(f"GET /v1/drivers: {response.status}")
                return len(msgspec.json.decode(await response.read()))

        async def ctl() -> int:
            return len(await daemon.admin.request("status"))

        async def rpc() -> int:
            return xmlrpc.status_request()  # blocks the loop: nothing else runs meanwhile

        ways: dict[str, Callable[[], Awaitable[int]]] = {"http": http, "ctl": ctl, "xmlrpc": rpc}
        samples: dict[str, list[float]] = {way: [] for way in ways}
        order = list(ways)
        for number in range(10 + plan.status_requests):
            shift = number % len(order)
            for way in order[shift:] + order[:shift]:
                start = time.perf_counter()
                rows = await ways[way]()
                elapsed = (time.perf_counter() - start) * 1e3
                if rows != plan.drivers:
                    raise RuntimeError(f"{way}: status has {rows} rows, not {plan.drivers}")
                if number >= 10:
                    samples[way].append(elapsed)
        return samples


# -- (b) calls/s -------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    calls_per_s: float
    cpu_us: dict[str, float]  # role -> CPU µs per call


async def window(call: Callable[[str], Awaitable[Any]], pids: dict[str, int], plan: Plan) -> Window:
    """CALLERS callers (one per resource) calling back to back: the calls
    finished within a window of ``plan.window_s`` after ``plan.warmup_s``."""
    done = 0
    stop = asyncio.Event()

    async def caller(resource: str) -> None:
        nonlocal done
        while not stop.is_set():
            await call(resource)
            done += 1

    async with asyncio.TaskGroup() as group:
        for resource in resources():
            group.create_task(caller(resource))
        try:
            await asyncio.sleep(plan.warmup_s)
            before_calls, before_cpu = done, upgrade.cpu_seconds(pids)
            start = time.perf_counter()
            await asyncio.sleep(plan.window_s)
            seconds = time.perf_counter() - start
            calls, after_cpu = done - before_calls, upgrade.cpu_seconds(pids)
        finally:
            stop.set()
    cpu = {role: (after_cpu[role] - before_cpu[role]) / calls * 1e6 for role in pids}
    return Window(calls / seconds, cpu)


def ctl_caller(client: AsyncClient) -> Callable[[str], Awaitable[Any]]:
    async def call(resource: str) -> Any:
        return await client.call(resource, "whoami")

    return call


def http_caller(session: aiohttp.ClientSession) -> Callable[[str], Awaitable[Any]]:
    async def call(resource: str) -> Any:
        async with session.post(f"{URL}/v1/resources/{resource}/calls/whoami") as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"call over HTTP: {response.status} {body[:200]!r}")
            return msgspec.json.decode(body)

    return call


class LeanHttp:
    """The lean HTTP/1.1 client: asyncio streams, a kept-alive connection per
    resource (each caller has its own), one request at a time on each (no
    pipelining), the request's bytes made once. What drivebayd serves when
    the client costs as little as ``AsyncClient`` does on the control socket
    (aiohttp's client spends more CPU per call than the daemon does)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._streams: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._requests = {
            resource: f"POST /v1/resources/{resource}/calls/whoami HTTP/1.1\r\n"
            "Host: localhost\r\nContent-Length: 0\r\n\r\n".encode()
            for resource in resources()
        }

    async def call(self, resource: str) -> Any:
        streams = self._streams.get(resource)
        if streams is None:
            streams = await asyncio.open_unix_connection(self._path)
            self._streams[resource] = streams
        reader, writer = streams
        writer.write(self._requests[resource])
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body = await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"call over HTTP: {head.splitlines()[0]!r} {body[:200]!r}")
        return msgspec.json.decode(body)

    async def close(self) -> None:
        for _, writer in self._streams.values():
            writer.close()
        for _, writer in self._streams.values():
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def pids_of(daemon: upgrade.Daemon) -> dict[str, int]:
    return {"here": os.getpid(), "daemon": daemon.pid, "driver": await daemon.driver_pid()}


FLOOR_SERVER = """
import asyncio, os, sys, uvloop
from aiohttp import web
BODY = b'{"resource":"r00","version":"1.0.0"}'
async def handle(request):
    return web.Response(body=BODY, content_type="application/json")
async def main():
    app = web.Application()
    app.router.add_post("/v1/resources/{id}/calls/{op}", handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.UnixSite(runner, sys.argv[1]).start()
    os.write(int(sys.argv[2]), b"R")
    await asyncio.Event().wait()
uvloop.run(main())
"""


async def call_rates(daemon: upgrade.Daemon, plan: Plan) -> dict[str, list[Window]]:
    """``plan.rounds`` windows of each way, in turn (the order rotating): over
    HTTP with the lean client and aiohttp's, over the control socket,
    and the floor: both HTTP clients against aiohttp's server alone (one
    route, a fixed body, no daemon behind it)."""
    floor_path = daemon.root / "floor.sock"
    argv = [sys.executable, "-c", FLOOR_SERVER, str(floor_path)]
    with _common.child_process(argv) as floor:
        return await _call_rates(daemon, str(floor_path), floor.pid, plan)


async def _call_rates(
    daemon: upgrade.Daemon, floor_path: str, floor_pid: int, plan: Plan
) -> dict[str, list[Window]]:
    pids = await pids_of(daemon)
    floor_pids = {"here": os.getpid(), "daemon": floor_pid}
    lean, floor_lean = LeanHttp(http_socket(daemon)), LeanHttp(floor_path)
    try:
        async with (
            http_session(http_socket(daemon), CALLERS) as session,
            http_session(floor_path, CALLERS) as floor_session,
        ):
            ways = {
                "http-lean": (lean.call, pids),
                "http-aiohttp": (http_caller(session), pids),
                "ctl": (ctl_caller(daemon.admin), pids),
                "floor-lean": (floor_lean.call, floor_pids),
                "floor-aiohttp": (http_caller(floor_session), floor_pids),
            }
            found: dict[str, list[Window]] = {way: [] for way in ways}
            order = list(ways)
            for number in range(plan.rounds):
                _common.progress(f"api: calls/s, round {number + 1}/{plan.rounds}")
                shift = number % len(order)
                for way in order[shift:] + order[:shift]:
                    call, roles = ways[way]
                    found[way].append(await window(call, roles, plan))
    finally:
        await lean.close()
        await floor_lean.close()
    return found


# -- (c) events over SSE -----------------------------------------------------------------


class SseReader:
    """One SSE client: counts the events it receives and the gaps among them."""

    def __init__(self) -> None:
        self.events = 0
        self.gaps = 0
        self.last_at = 0.0  # perf_counter of the last chunk
        self.changed = asyncio.Event()

    async def read(self, response: aiohttp.ClientResponse) -> None:
        tail = b""  # the end of the previous chunk: an event's blank line may be split
        gap = b"event: gap\n"
        try:
            async for chunk in response.content.iter_any():
                data = tail + chunk
                self.events += data.count(b"\n\n") - tail.count(b"\n\n")
                self.gaps += data.count(gap) - tail.count(gap)
                tail = data[-16:]
                self.last_at = time.perf_counter()
                self.changed.set()
        finally:
            response.close()
            self.changed.set()


async def last_seq(client: AsyncClient) -> int:
    """The sequence number of the newest event in the ring."""
    (event,) = await client.request("events", {"last": 1})
    return int(event["id"].rsplit("-", 1)[1])


async def sse_rate(daemon: upgrade.Daemon, plan: Plan) -> dict[str, float]:
    """Events delivered per second to SSE_CLIENTS readers, and made per second."""
    readers = [SseReader() for _ in range(SSE_CLIENTS)]
    headers = {"Accept": "text/event-stream"}
    tasks: list[asyncio.Task[None]] = []
    async with http_session(http_socket(daemon), SSE_CLIENTS) as session:
        try:
            for reader in readers:
                response = await session.get(f"{URL}/v1/events", headers=headers)
                if response.status != 200:
                    raise RuntimeError(f"GET /v1/events: {response.status}")
                tasks.append(asyncio.create_task(reader.read(response)))
            first = await last_seq(daemon.admin)
            stop = asyncio.Event()

            async def change(resource: str) -> None:
                added = {"id": resource, "driver": upgrade.DRIVER, "assignments": []}
                while not stop.is_set():
                    await daemon.admin.request("resource-add", added)
                    await daemon.admin.request("resource-rm", {"id": resource})

            start = time.perf_counter()
            async with asyncio.TaskGroup() as changers:
                for number in range(CHANGERS):
                    changers.create_task(change(f"sse{number:02d}"))
                await asyncio.sleep(plan.sse_s)
                stop.set()
            made_s = time.perf_counter() - start
            made = await last_seq(daemon.admin) - first
            async with asyncio.timeout(DRAIN_S):
                for reader, task in zip(readers, tasks, strict=True):
                    while reader.events < made and not task.done():
                        reader.changed.clear()
                        await reader.changed.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    received = [reader.events for reader in readers]
    if any(reader.gaps for reader in readers) or min(received) < made:
        raise RuntimeError(f"SSE: {made} events made, received {received} (gaps: a slow client)")
    delivered_s = max(reader.last_at for reader in readers) - start
    return {
        "events": made,
        "made_per_s": made / made_s,
        "delivered_per_s": made * SSE_CLIENTS / delivered_s,
        "changes_per_s": made / 2 / made_s,  # an event and an audit event each
    }


# -- (d) metrics on and off ---------------------------------------------------------------


async def metrics_rates(root: Path, envs_dir: Path, plan: Plan) -> dict[str, list[Window]]:
    """The control socket's calls/s, metrics on and off, each run a daemon of
    its own (as ``metrics_overhead.py`` runs ``upgrade.py``), in the order
    on, off, off, on, ...: neither setting always first, and no one process's
    luck (its memory layout, its CPU) in every run of a setting."""
    found: dict[str, list[Window]] = {"on": [], "off": []}
    order = metrics_overhead.order(plan.metrics_runs)
    for number, setting in enumerate(order):
        _common.progress(f"api: metrics {setting}, run {number + 1}/{len(order)}")
        where = root / f"metrics-{number:02d}-{setting}"
        async with drivebayd(where, envs_dir, 0, setting == "on") as daemon:
            call = ctl_caller(daemon.admin)
            found[setting].append(await window(call, await pids_of(daemon), plan))
    return found


# -- all ----------------------------------------------------------------------------------


@dataclass
class Results:
    status: dict[str, list[float]]
    calls: dict[str, list[Window]]
    sse: dict[str, float]
    metrics: dict[str, list[Window]]


async def run_all(plan: Plan, root: Path, envs_dir: Path) -> Results:
    _common.progress(
        f"api: starting drivebayd ({plan.drivers} drivers) and supervisord "
        f"({plan.drivers} programs)"
    )
    with supervisord_running(root / "supervisord", plan.drivers) as xmlrpc:
        async with drivebayd(root / "drivebayd", envs_dir, plan.drivers - 1, True) as daemon:
            await asyncio.sleep(supervise.SETTLE_S)  # the starts' tail
            _common.progress("api: status ...")
            status = await status_ms(daemon, xmlrpc, plan)
            calls = await call_rates(daemon, plan)
            _common.progress("api: events over SSE ...")
            sse = await sse_rate(daemon, plan)
    metrics = await metrics_rates(root, envs_dir, plan)
    return Results(status, calls, sse, metrics)


async def run_calls(plan: Plan, root: Path, envs_dir: Path) -> dict[str, list[Window]]:
    """(b) alone, against a drivebayd with the ledger only."""
    _common.progress("api: starting drivebayd (the ledger only)")
    async with drivebayd(root / "drivebayd", envs_dir, 0, True) as daemon:
        return await call_rates(daemon, plan)


# -- reporting ----------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cpu(windows: list[Window]) -> dict[str, float]:
    """Each role's median CPU µs per call over ``windows``."""
    roles = windows[0].cpu_us
    return {role: round(statistics.median(w.cpu_us[role] for w in windows), 1) for role in roles}


def call_figures(calls: dict[str, list[Window]]) -> dict[str, Any]:
    """The keys of (b): calls/s of each way (median of its windows), the ratios, CPU."""
    rates = {way: summary([w.calls_per_s for w in ws]) for way, ws in calls.items()}
    result = {
        "http_calls_per_s": rates["http-lean"]["median"],
        "ctl_calls_per_s": rates["ctl"]["median"],
        "http_over_ctl_calls": rates["http-lean"]["median"] / rates["ctl"]["median"],
        "http_aiohttp_calls_per_s": rates["http-aiohttp"]["median"],
        "http_aiohttp_over_ctl_calls": rates["http-aiohttp"]["median"] / rates["ctl"]["median"],
        "floor_http_calls_per_s": rates["floor-lean"]["median"],
        "floor_http_aiohttp_calls_per_s": rates["floor-aiohttp"]["median"],
    }
    return {
        **{key: round(value, 3) for key, value in result.items()},
        "calls_per_s": {way: {k: round(v) for k, v in s.items()} for way, s in rates.items()},
        "cpu_us_per_call": {way: cpu(ws) for way, ws in calls.items()},
    }


def figures(r: Results) -> dict[str, Any]:
    status = {way: statistics.median(times) for way, times in r.status.items()}
    metrics = {s: summary([w.calls_per_s for w in ws]) for s, ws in r.metrics.items()}

    result: dict[str, Any] = {
        "http_status_ms": status["http"],
        "ctl_status_ms": status["ctl"],
        "xmlrpc_status_ms": status["xmlrpc"],
        "xmlrpc_over_http_status": status["xmlrpc"] / status["http"],
        "sse_events_per_s": r.sse["delivered_per_s"],
        "sse_events_made_per_s": r.sse["made_per_s"],
        "metrics_on_calls_per_s": metrics["on"]["median"],
        "metrics_off_calls_per_s": metrics["off"]["median"],
        "metrics_on_over_off": metrics["on"]["median"] / metrics["off"]["median"],
    }
    result = {key: round(value, 3) for key, value in result.items()}
    result["status_p90_ms"] = {
        way: round(_common.percentile(sorted(times), 90), 3) for way, times in r.status.items()
    }
    calls = call_figures(r.calls)
    result = {**result, **calls}
    result["metrics_calls_per_s"] = {
        s: {k: round(v) for k, v in summary_.items()} for s, summary_ in metrics.items()
    }
    result["cpu_us_per_call"] = {
        **calls["cpu_us_per_call"],
        **{f"metrics {s}": cpu(ws) for s, ws in r.metrics.items()},
    }
    on_cpu, off_cpu = cpu(r.metrics["on"])["daemon"], cpu(r.metrics["off"])["daemon"]
    result["metrics_daemon_cpu_on_over_off"] = round(on_cpu / off_cpu, 3)
    result["sse"] = {key: round(value, 1) for key, value in r.sse.items()}
    result["targets"] = {
        label: {"goal": goal, "value": value, "met": met}
        for label, goal, value, met in targets(result)
    }
    return result


def targets(result: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, goal, value, met) for each target of the issue."""
    status, calls = result["xmlrpc_over_http_status"], result["http_over_ctl_calls"]
    metrics, cpu = result["metrics_on_over_off"], result["metrics_daemon_cpu_on_over_off"]
    return [
        ("status: XML-RPC ms / HTTP ms", ">= 5", f"{status:.1f}", status >= 5),
        (
            "calls/s: HTTP (lean client) / control socket",
            ">= 0.25",
            f"{calls:.2f}",
            calls >= 0.25,
        ),
        ("calls/s: metrics on / off", ">= 0.95", f"{metrics:.3f}", metrics >= 0.95),
        ("drivebayd CPU µs/call: metrics on / off", "<= 1.05", f"{cpu:.3f}", cpu <= 1.05),
    ]


def report(result: dict[str, Any], plan: Plan) -> str:
    n = _common.number
    xmlrpc = result["xmlrpc_status_ms"]
    status_rows = [
        [label, n(result[key]), n(result["status_p90_ms"][way]), f"{xmlrpc / result[key]:.1f}x"]
        for label, key, way in (
            ("HTTP GET /v1/drivers (aiohttp client)", "http_status_ms", "http"),
            ("control socket status (AsyncClient)", "ctl_status_ms", "ctl"),
            ("supervisord XML-RPC getAllProcessInfo", "xmlrpc_status_ms", "xmlrpc"),
        )
    ]
    cpu = result["cpu_us_per_call"]
    rate_rows = [
        *call_rows(result),
        rate_row(
            result,
            "control socket, metrics on",
            result["metrics_calls_per_s"]["on"],
            cpu["metrics on"],
        ),
        rate_row(
            result,
            "control socket, metrics off",
            result["metrics_calls_per_s"]["off"],
            cpu["metrics off"],
        ),
    ]
    sse = result["sse"]
    sse_rows = [
        ["events made per s (resource-add/rm, 2 events each)", n(sse["made_per_s"])],
        [f"events delivered per s, {SSE_CLIENTS} clients in all", n(sse["delivered_per_s"])],
        ["events made, each received by every client, no gap", f"{int(sse['events']):,}"],
    ]
    target_rows = [
        [label, goal, value, "met" if met else "NOT met"]
        for label, goal, value, met in targets(result)
    ]
    return "\n\n".join(
        [
            _common.format_table(
                [
                    f"status of {plan.drivers} drivers, {plan.status_requests} each",
                    "median ms",
                    "p90 ms",
                    "XML-RPC / this",
                ],
                status_rows,
            ),
            calls_table(rate_rows, plan),
            _common.format_table(["events over SSE", ""], sse_rows),
            _common.format_table(["target", "goal", "value", ""], target_rows),
            judged(result),
        ]
    )


def rate_row(
    result: dict[str, Any], label: str, rates: dict[str, int], roles: dict[str, float]
) -> list[str]:
    n = _common.number
    return [
        label,
        n(rates["median"]),
        f"{n(rates['min'])} - {n(rates['max'])}",
        f"{rates['median'] / result['ctl_calls_per_s']:.2f}",
        n(roles["daemon"]),
        n(roles["here"]),
        n(roles.get("driver")),
    ]


def call_rows(result: dict[str, Any]) -> list[list[str]]:
    """A row of (b) per way: calls/s, its ratio to the control socket's, CPU."""
    rates, cpu = result["calls_per_s"], result["cpu_us_per_call"]
    return [
        rate_row(result, label, rates[way], cpu[way])
        for label, way in (
            ("HTTP POST .../calls/whoami, lean client", "http-lean"),
            ("HTTP POST .../calls/whoami, aiohttp client", "http-aiohttp"),
            ("control socket call (AsyncClient)", "ctl"),
            ("floor: aiohttp server alone, lean client", "floor-lean"),
            ("floor: aiohttp server alone, aiohttp client", "floor-aiohttp"),
        )
    ]


def calls_table(rows: list[list[str]], plan: Plan) -> str:
    return _common.format_table(
        [
            f"{CALLERS} callers, windows of {plan.window_s:g} s",
            "calls/s median",
            "range",
            "/ ctl",
            "CPU µs/call: drivebayd",
            "here",
            "driver",
        ],
        rows,
    )


def judged(result: dict[str, Any]) -> str:
    ratio = result["http_over_ctl_calls"]
    verdict = "met" if ratio >= 0.25 else "NOT met"
    return (
        f"HTTP / control socket: {ratio:.2f} (target >= 0.25: {verdict}),\n"
        "judged with the lean HTTP client, as the control socket's calls are made\n"
        "with AsyncClient (lean against lean: the daemon's two paths, not two\n"
        "client libraries); with aiohttp's client, HTTP / control socket is "
        f"{result['http_aiohttp_over_ctl_calls']:.2f}."
    )


def _footer(info: dict[str, Any], quick: bool, took: float) -> str:
    return (
        f"\n{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_1m_before']} before, {info['loadavg_1m']} after, "
        f"{'quick' if quick else 'full'} run, {took:.0f} s"
    )


def main(argv: list[str] | None = None) -> None:
    import uvloop

    parser = _common.bench_parser(__doc__.split("\n\n")[0], "10 drivers, shorter windows")
    parser.add_argument(
        "--calls",
        action="store_true",
        help="only the calls/s, against drivebayd with the ledger alone",
    )
    options = parser.parse_args(argv)
    plan = QUICK if options.quick else FULL
    options.envs_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = _common.machine()["loadavg_1m"]
    with supervise.reaping_orphans(), tempfile.TemporaryDirectory(prefix="drivebay-api-") as tmp:
        if options.calls:
            calls = uvloop.run(run_calls(plan, Path(tmp), options.envs_dir))
        else:
            results = uvloop.run(run_all(plan, Path(tmp), options.envs_dir))
    info = {**_common.machine(), "loadavg_1m_before": load_before}
    if options.calls:
        result = call_figures(calls)
        print(calls_table(call_rows(result), plan) + "\n\n" + judged(result))
    else:
        result = figures(results)
        print(report(result, plan))
    print(_footer(info, options.quick, time.monotonic() - started))
    if options.json:
        mode = "quick" if options.quick else "full"
        _common.print_json_last(
            {**result, "mode": mode, "machine": info, "plan": dataclasses.asdict(plan)}
        )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # every process is reaped by then; spare the traceback
        sys.exit(130)
