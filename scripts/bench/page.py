"""Admin page benchmark: the page and the resources listing with 100 drivers and 10,000 resources.

Run with the project venv, from the repository root, after compiling the
project's bytecode (``scripts/test`` does the same), with Chromium installed
(Debian: ``apt-get install chromium``)::

    .venv/bin/python -m compileall -q kernel sandbox protocol
    .venv/bin/python scripts/bench/page.py [--quick] [--json]

One drivebayd, default settings but for its paths, ``http.listen`` on
loopback and a viewer token: 100 drivers (20 with ``--quick``), the ledger
driver of ``upgrade.py`` and idle bundles of ``supervise.py`` (the idle ones
share one env), all RUNNING; 10,000 ledger resources (1,000 with
``--quick``), added over the control socket, 64 requests in flight.

Figures, from this process on uvloop:

(a) listings: ``GET /v1/resources`` whole, against one page of 50
    (``?limit=50``: the first page; ``?limit=50&after=ID``: from the middle),
    and ``GET /v1/drivers`` (the status of every driver: the page's other
    table), over http.sock (aiohttp's client, one kept-alive connection), in
    turn after a warm-up: the median and p90 ms from the request to the last
    byte of the answer, and the answer's size.
(b) the page in headless Chromium (``tests/e2e/browser.py``, the browser
    test's driver), logged in with the token over loopback TCP, then loaded
    again N times (10; 3 with ``--quick``): from the start of navigation to the
    first paint of the drivers table and of the resources table (the page's
    ``performance`` marks, set in the frame after each table is first
    filled), and each of the page's requests (Resource Timing, from its start
    to the last byte of its answer; the event stream stays open and is not
    timed); the median and range of the loads. The rows in the DOM are
    counted after each load: never more than a page of each (50).

``--json`` ends with one object: ``drivers``, ``resources``, ``listing_ms``
(median by listing: ``full``, ``page``, ``page_after``, ``status``),
``listing_p90_ms``, ``listing_bytes``, ``full_over_page``,
``drivers_painted_ms``, ``resources_painted_ms`` (medians), ``requests_ms``
(median by request), ``dom_rows`` (the most seen), ``loads``, ``machine``.
Every process started here is stopped and reaped, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import api
import supervise
import upgrade

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the browser test's Chromium driver

from tests.e2e.browser import browser  # noqa: E402

TOKEN = "a-viewer-token-for-the-page-benchmark"
PAGE = 50  # the page's rows per table (kernel/httpapi/page/index.html)
IN_FLIGHT = 64  # resource-add requests at a time
WARMUP = 3  # requests of each listing before the measured ones
LOAD_S = 120.0  # for one load of the page to show both tables


@dataclass(frozen=True)
class Plan:
    drivers: int
    resources: int
    requests: int  # of each listing
    loads: int  # of the page


FULL = Plan(100, 10_000, 30, 10)
QUICK = Plan(20, 1_000, 10, 3)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def drivebayd(root: Path, envs_dir: Path, plan: Plan, port: int) -> AsyncIterator[Any]:
    """drivebayd with ``plan.drivers`` drivers RUNNING and ``plan.resources``
    ledger resources, its HTTP API on 127.0.0.1:``port`` for the page."""
    extra = {
        "http": {"listen": f"127.0.0.1:{port}"},
        "authorization": {
            "tokens": [{"sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "role": "viewer"}]
        },
    }
    async with upgrade.drivebayd(root, envs_dir, True, extra) as daemon:
        staging, drivers = root / "idle-staging", root / "drivers"
        staging.mkdir()
        for number in range(plan.drivers - 1):  # a finished bundle is moved in at once
            bundle = supervise.write_bundle(staging, f"idle-{number:03d}")
            os.rename(bundle, drivers / bundle.name)
        started = time.monotonic()
        async with upgrade.connections(daemon, 4) as clients:
            await upgrade.add_resources(clients, resource_ids(plan), IN_FLIGHT)
        _common.progress(
            f"page: {plan.resources:,} resources added in {time.monotonic() - started:.1f} s"
        )

        async def all_running() -> bool:
            rows = await daemon.admin.request("status")
            broken = [r for r in rows if r["state"] in ("FAILED", "FATAL", "INVALID", "BLOCKED")]
            if broken:
                raise RuntimeError(f"drivebayd: {broken[0]['name']}: {broken[0]}")
            return len(rows) == plan.drivers and all(r["state"] == "RUNNING" for r in rows)

        await upgrade.settle(all_running, 600, f"drivebayd: {plan.drivers} drivers RUNNING")
        yield daemon


def resource_ids(plan: Plan) -> list[str]:
    return upgrade.resource_ids("r", plan.resources)


# -- (a) listings ----------------------------------------------------------------------


async def listings(daemon: Any, plan: Plan) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Each listing's times (ms) and answer size (bytes)."""
    middle = resource_ids(plan)[plan.resources // 2]
    targets = {
        "full": "/v1/resources",
        "page": f"/v1/resources?limit={PAGE}",
        "page_after": f"/v1/resources?limit={PAGE}&after={middle}",
        "status": "/v1/drivers",
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    sizes: dict[str, int] = {}
    async with api.http_session(api.http_socket(daemon), 1) as session:

        async def one(target: str) -> tuple[float, int]:
            began = time.perf_counter_ns()
            async with session.get(api.URL + target) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {target}: {response.status} {body[:200]!r}")
            return (time.perf_counter_ns() - began) / 1e6, len(body)

        for _ in range(WARMUP):
            for target in targets.values():
                await one(target)
        for _ in range(plan.requests):
            for name, target in targets.items():
                took, sizes[name] = await one(target)
                times[name].append(took)
    return times, sizes


# -- (b) the page in Chromium -------------------------------------------------------------

MEASURED = """(() => {
  if (window.loadedBefore) return null;
  const mark = (name) => performance.getEntriesByName(name)[0];
  const drivers = mark('drivebay:drivers'), resources = mark('drivebay:resources');
  if (!drivers || !resources) return null;
  const requests = performance.getEntriesByType('resource').map((e) => {
    const url = new URL(e.name);
    return [url.pathname + url.search, e.responseEnd - e.startTime];
  });
  const page = performance.getEntriesByType('navigation')[0];
  requests.unshift(['/', page.responseEnd - page.startTime]);
  return JSON.stringify({
    drivers: drivers.startTime, resources: resources.startTime, requests,
    rows: {drivers: document.querySelectorAll('#drivers tr').length,
           resources: document.querySelectorAll('#resources tr').length},
    counts: [document.getElementById('driver-count').textContent,
             document.getElementById('resource-count').textContent],
  });
})()"""


async def page_loads(port: int, plan: Plan, profile: Path) -> list[dict[str, Any]]:
    """Log in once, then load the page ``plan.loads`` times: what each load measured."""
    url = f"http://127.0.0.1:{port}/"
    loads = []
    async with browser(profile) as chromium:
        page = await chromium.new_page()
        await page.goto(url)
        await page.wait_for("!document.getElementById('login').hidden", LOAD_S)
        await page.type_into("#token", TOKEN)
        await page.click("#login-button")
        await page.wait_for("document.getElementById('role').textContent === 'viewer'", LOAD_S)
        for _ in range(plan.loads):
            await page.evaluate("window.loadedBefore = true")
            await page.goto(url)  # the session's cookie: the page starts at once
            loads.append(json.loads(await page.wait_for(MEASURED, LOAD_S)))
        if page.errors:
            raise RuntimeError(f"the page's console: {page.errors}")
    for load in loads:
        wanted = [f"({plan.drivers})", f"({plan.resources})"]
        if load["counts"] != wanted:
            raise RuntimeError(f"the page counted {load['counts']}, not {wanted}")
        if max(load["rows"].values()) > PAGE:
            raise RuntimeError(f"more rows than a page in the DOM: {load['rows']}")
    return loads


# -- running and reporting --------------------------------------------------------------


async def run_all(plan: Plan, root: Path, envs_dir: Path) -> dict[str, Any]:
    port = free_port()
    _common.progress(
        f"page: starting drivebayd ({plan.drivers} drivers, {plan.resources:,} resources)"
    )
    async with drivebayd(root / "drivebayd", envs_dir, plan, port) as daemon:
        _common.progress("page: listings ...")
        times, sizes = await listings(daemon, plan)
        _common.progress("page: the page in Chromium ...")
        loads = await page_loads(port, plan, root / "chromium")
    return {"times": times, "sizes": sizes, "loads": loads}


def request_name(target: str) -> str:
    """A request of the page as the report names it (the resume id left out)."""
    return target.split("&after=")[0]


def figures(raw: dict[str, Any], plan: Plan) -> dict[str, Any]:
    times: dict[str, list[float]] = raw["times"]
    loads: list[dict[str, Any]] = raw["loads"]
    median = {name: statistics.median(values) for name, values in times.items()}
    requests: dict[str, list[float]] = {}
    for load in loads:
        for target, took in load["requests"]:
            requests.setdefault(request_name(target), []).append(took)

    def spread(values: list[float]) -> dict[str, float]:
        return {
            "median": round(statistics.median(values), 1),
            "min": round(min(values), 1),
            "max": round(max(values), 1),
        }

    return {
        "drivers": plan.drivers,
        "resources": plan.resources,
        "listing_ms": {name: round(value, 3) for name, value in median.items()},
        "listing_p90_ms": {
            name: round(_common.percentile(sorted(values), 90), 3) for name, values in times.items()
        },
        "listing_bytes": raw["sizes"],
        "full_over_page": round(median["full"] / median["page"], 1),
        "drivers_painted_ms": spread([load["drivers"] for load in loads]),
        "resources_painted_ms": spread([load["resources"] for load in loads]),
        "requests_ms": {name: spread(values) for name, values in requests.items()},
        "dom_rows": {
            table: max(load["rows"][table] for load in loads) for table in ("drivers", "resources")
        },
        "loads": len(loads),
    }


def report(result: dict[str, Any], plan: Plan) -> str:
    n = _common.number
    listing = [
        [
            label,
            n(result["listing_ms"][key]),
            n(result["listing_p90_ms"][key]),
            n(result["listing_bytes"][key]),
        ]
        for label, key in (
            (f"GET /v1/resources (all {plan.resources:,})", "full"),
            (f"GET /v1/resources?limit={PAGE} (the first page)", "page"),
            (f"GET /v1/resources?limit={PAGE}&after=ID (the middle)", "page_after"),
            (f"GET /v1/drivers ({plan.drivers} drivers)", "status"),
        )
    ]

    def row(label: str, values: dict[str, float]) -> list[str]:
        return [label, n(values["median"]), f"{n(values['min'])} - {n(values['max'])}"]

    page = [
        row("drivers table painted (from navigation start)", result["drivers_painted_ms"]),
        row("resources table painted (from navigation start)", result["resources_painted_ms"]),
        *(row(f"request GET {name}", values) for name, values in result["requests_ms"].items()),
    ]
    rows = result["dom_rows"]
    return "\n\n".join(
        [
            _common.format_table(
                [f"over http.sock, {plan.requests} each", "median ms", "p90 ms", "bytes"], listing
            ),
            _common.format_table(
                [f"the page in Chromium, {plan.loads} loads", "median ms", "range"], page
            ),
            f"rows in the DOM, at most: drivers {rows['drivers']}, resources {rows['resources']}"
            f" (a page: {PAGE}); the full listing takes {result['full_over_page']}x one page",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    import uvloop

    parser = _common.bench_parser(
        __doc__.split("\n\n")[0], "20 drivers, 1,000 resources, fewer requests and loads"
    )
    options = parser.parse_args(argv)
    plan = QUICK if options.quick else FULL
    options.envs_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = _common.machine()["loadavg_1m"]
    with supervise.reaping_orphans(), tempfile.TemporaryDirectory(prefix="drivebay-page-") as tmp:
        raw = uvloop.run(run_all(plan, Path(tmp), options.envs_dir))
    info = {**_common.machine(), "loadavg_1m_before": load_before}
    result = figures(raw, plan)
    print(report(result, plan))
    print(
        f"\n{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"load {info['loadavg_1m_before']} before, {info['loadavg_1m']} after, "
        f"{'quick' if options.quick else 'full'} run, {time.monotonic() - started:.0f} s"
    )
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
