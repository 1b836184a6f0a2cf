"""Metrics without driver processes: meters, the exposition, the listener."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

import drivebay
from drivebay.kernel.config import Config, MetricsSettings, load_config
from drivebay.kernel.drivers.lifecycle import State
from drivebay.kernel.kernel import Kernel
from drivebay.kernel.metrics.exposition import (
    HistogramSample,
    SlotSample,
    Snapshot,
    read_proc,
    render,
    render_metrics,
    take_snapshot,
)
from drivebay.kernel.metrics.listener import serve_metrics
from drivebay.kernel.metrics.meters import (
    CALL_BOUNDS,
    ERROR,
    OK,
    OTHER,
    OUTCOMES,
    REFUSED,
    TIMEOUT,
    CallMeter,
    Histogram,
    Metrics,
    outcome_of,
)
from drivebay.protocol.errors import (
    CallTimeout,
    ConfigError,
    DriverCrashed,
    DriverHung,
    KernelError,
    OperationFailed,
)
from tests.helpers import run

Samples = list[Any]


def samples(text: str) -> Samples:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: Samples, name: str, **labels: str) -> float:
    matches = [s.value for s in found if s.name == name and labels.items() <= s.labels.items()]
    assert len(matches) == 1, (name, labels, matches)
    return float(matches[0])


def fake_proc(root: Path, pid: int, utime: int, stime: int, rss_pages: int, fds: int) -> Path:
    """A /proc with one process: its stat line (a name with spaces and a
    parenthesis, as a driver may set) and ``fds`` descriptors."""
    fields = ["S", "1", str(pid), str(pid), "0", "-1", "0", "0", "0", "0", "0"]
    fields += [str(utime), str(stime), "0", "0", "20", "0", "1", "0", "100", "1000"]
    fields += [str(rss_pages)]
    process = root / str(pid)
    (process / "fd").mkdir(parents=True)
    (process / "stat").write_text(f"{pid} (a) b (c) " + " ".join(fields) + " 0 0\n")
    for n in range(fds):
        (process / "fd" / str(n)).write_text("")
    return root


# -- meters ------------------------------------------------------------------------


def test_a_meter_labels_the_class_s_operations_and_counts_the_rest_as_other():
    meter = CallMeter("alpha", "1.0.0")
    meter.know(["echo", "resize"])
    meter.record("echo", OK, 0.001)
    meter.record("echo", ERROR, 0.002)
    meter.record("no_such_op", ERROR, 0.003)
    meter.record("another_unknown", TIMEOUT, 30.0)
    meter.count("resize", REFUSED)
    rows = meter.rows()
    assert set(rows) == {"echo", "resize", OTHER}  # unknown names never become labels
    assert rows["echo"][OK] == 1 and rows["echo"][ERROR] == 1
    assert rows[OTHER][ERROR] == 1 and rows[OTHER][TIMEOUT] == 1
    assert rows["resize"][REFUSED] == 1
    assert sum(meter.buckets) == 4  # count() is not timed
    assert meter.seconds == pytest.approx(30.006)


def test_histogram_buckets_are_less_than_or_equal():
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.1, 0.5, 1.0, 1.5):
        histogram.observe(seconds)
    assert histogram.counts == [1, 2, 1]  # 0.1 in le=0.1, 1.0 in le=1, 1.5 in +Inf


def test_outcome_of_a_failed_call():
    failures = [
        OperationFailed("ValueError", "bad"),
        CallTimeout("late"),
        DriverHung("hung"),
        DriverCrashed("gone"),
    ]
    assert [OUTCOMES[outcome_of(exc)] for exc in failures] == [
        "error",
        "timeout",
        "crashed",
        "crashed",
    ]


def test_calls_are_not_metered_when_metrics_are_off():
    assert Metrics(count_calls=False).meter("alpha", "1.0.0") is None
    metrics = Metrics()
    assert metrics.meter("alpha", "1.0.0") is metrics.meter("alpha", "1.0.0")  # one per version
    metrics.forget_except(["beta@2.0.0"])
    assert metrics.meters == {}


def test_upgrades_rollbacks_and_handovers_are_counted_by_driver():
    metrics = Metrics()
    metrics.handed_over("alpha", 0.02, ok=True, upgrade=True)
    metrics.handed_over("alpha", 0.5, ok=False, upgrade=True)
    metrics.handed_over("alpha", 0.01, ok=True, upgrade=False)  # new settings: no upgrade
    metrics.rolled_back("beta")
    assert metrics.upgrades == {"alpha": 1}
    assert metrics.rollbacks == {"alpha": 1, "beta": 1}
    assert sum(metrics.handovers["alpha"].counts) == 3


# -- the exposition ----------------------------------------------------------------


def snapshot_of_two_versions() -> Snapshot:
    meter = CallMeter("alpha", "1.0.0")
    meter.know(["echo"])
    meter.record("echo", OK, 0.0004)
    meter.record("echo", OK, 0.02)
    meter.record("bogus", ERROR, 0.001)
    handover = Histogram((0.01, 1.0))
    handover.observe(0.005)
    return Snapshot(
        slots=[
            SlotSample("alpha", "1.0.0", "RUNNING", 2, 1_700_000_000.0, 4242),
            SlotSample("alpha", "1.1.0", "FAILED", 0, None, None),
        ],
        calls={("alpha", "1.0.0"): meter.rows()},
        durations={("alpha", "1.0.0"): HistogramSample(CALL_BOUNDS, meter.buckets, meter.seconds)},
        mailbox={("alpha", "1.0.0"): 3, ("alpha", "1.1.0"): 0},
        resources={("alpha", "1.0.0"): 2, ("alpha", "1.1.0"): 0},
        upgrades={"alpha": 1},
        rollbacks={"alpha": 1},
        handovers={"alpha": HistogramSample.of(handover)},
        env_builds=HistogramSample.of(Histogram((1.0,))),
        bundles={"valid": 2, "invalid": 1, "pending": 0},
    )


def test_the_exposition_parses_and_says_what_the_snapshot_holds(tmp_path):
    proc = fake_proc(tmp_path / "proc", 4242, utime=250, stime=50, rss_pages=100, fds=7)
    body, content_type = render(snapshot_of_two_versions(), proc=str(proc))
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(body.decode())
    running = {"driver": "alpha", "version": "1.0.0"}
    states = [
        s
        for s in found
        if s.name == "drivebay_driver_state" and running.items() <= s.labels.items()
    ]
    assert len(states) == len(State) and sum(s.value for s in states) == 1  # one-hot
    assert value(found, "drivebay_driver_state", state="RUNNING", **running) == 1
    assert value(found, "drivebay_driver_state", state="FAILED", version="1.1.0") == 1
    assert value(found, "drivebay_driver_restarts_total", **running) == 2
    assert value(found, "drivebay_driver_start_time_seconds", **running) == 1_700_000_000
    started = [s for s in found if s.name == "drivebay_driver_start_time_seconds"]
    assert [s.labels["version"] for s in started] == ["1.0.0"]  # only a running one started
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    assert value(found, "drivebay_driver_cpu_seconds_total", **running) == pytest.approx(
        300 / ticks
    )
    assert value(found, "drivebay_driver_resident_memory_bytes", **running) == 100 * page
    assert value(found, "drivebay_driver_open_fds", **running) == 7
    assert value(found, "drivebay_calls_total", operation="echo", outcome="ok", **running) == 2
    assert value(found, "drivebay_calls_total", operation="other", outcome="error") == 1
    assert not [s for s in found if s.labels.get("operation") == "bogus"]
    assert value(found, "drivebay_call_duration_seconds_count", **running) == 3
    assert value(found, "drivebay_call_duration_seconds_bucket", le="0.0005", **running) == 1
    assert value(found, "drivebay_call_duration_seconds_bucket", le="0.025", **running) == 3
    assert value(found, "drivebay_call_duration_seconds_bucket", le="+Inf", **running) == 3
    assert value(found, "drivebay_mailbox_depth", **running) == 3
    assert value(found, "drivebay_resources", **running) == 2
    assert value(found, "drivebay_upgrades_total", driver="alpha") == 1
    assert value(found, "drivebay_rollbacks_total", driver="alpha") == 1
    assert value(found, "drivebay_handover_duration_seconds_bucket", le="0.01") == 1
    assert value(found, "drivebay_env_build_duration_seconds_count") == 0
    assert value(found, "drivebay_bundles", verdict="invalid") == 1
    assert value(found, "drivebay_build_info", version=drivebay.__version__) == 1
    assert value(found, "process_resident_memory_bytes") > 0  # the daemon's own
    buckets = [s for s in found if s.name == "drivebay_call_duration_seconds_bucket"]
    assert len(buckets) == len(CALL_BOUNDS) + 1


def test_a_process_gone_at_scrape_time_is_left_out(tmp_path):
    assert read_proc(999_999, str(tmp_path)) is None
    body, _ = render(snapshot_of_two_versions(), proc=str(tmp_path))
    assert b"drivebay_driver_resident_memory_bytes{" not in body


def test_a_snapshot_of_a_kernel_with_nothing_yet(tmp_path):
    kernel = Kernel(Config(state_dir=str(tmp_path / "state")))
    kernel.metrics.meter("gone", "1.0.0")  # a version no slot has any more
    snapshot = take_snapshot(kernel)
    assert snapshot.slots == [] and snapshot.calls == {}
    assert snapshot.bundles == {"valid": 0, "invalid": 0, "pending": 0}
    assert kernel.metrics.meters == {}
    body, _ = run(render_metrics(kernel))
    assert value(samples(body.decode()), "drivebay_bundles", verdict="valid") == 0


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_listen_addresses(listen, address):
    assert MetricsSettings(listen=listen).address() == address


def test_a_bad_listen_address_is_one_line(tmp_path):
    path = tmp_path / "drivebay.yaml"
    path.write_text("metrics: {listen: 'localhost:http'}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: metrics.listen: 'localhost:http' is not HOST:PORT; write e.g. 127.0.0.1:9464"
    )


def test_metrics_are_on_by_default_and_not_served_apart():
    assert Config().metrics == MetricsSettings(enabled=True, listen=None)
    assert msgspec.convert({"metrics": {"enabled": False}}, Config).metrics.enabled is False


# -- the listener ------------------------------------------------------------------


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            return await reader.read()  # the listener closes after one answer
    finally:
        writer.close()
        await writer.wait_closed()


def test_the_listener_answers_get_and_head_of_metrics_only(tmp_path):
    config = msgspec.convert(
        {"state_dir": str(tmp_path / "state"), "metrics": {"listen": "127.0.0.1:0"}}, Config
    )
    kernel = Kernel(config)

    async def scenario() -> dict[str, bytes]:
        async with serve_metrics(kernel) as bound:
            ((_, port),) = bound
            requests = {
                "get": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "head": b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n",
                "other": b"GET /v1/drivers HTTP/1.1\r\n\r\n",
                "post": b"POST /metrics HTTP/1.1\r\n\r\n",
                "garbage": b"hello\r\n\r\n",
                "openmetrics": b"GET /metrics HTTP/1.1\r\n"
                b"accept: application/openmetrics-text; version=1.0.0\r\n\r\n",
            }
            return {k: await _exchange(port, r) for k, r in requests.items()}

    answers = run(scenario())
    head, _, body = answers["get"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert value(samples(body.decode()), "drivebay_bundles", verdict="pending") == 0
    assert answers["head"].startswith(b"HTTP/1.1 200 OK") and answers["head"].endswith(b"\r\n\r\n")
    assert answers["other"].startswith(b"HTTP/1.1 404 Not Found")
    assert answers["post"].startswith(b"HTTP/1.1 405 Method Not Allowed")
    assert answers["garbage"].startswith(b"HTTP/1.1 400 Bad Request")
    # Content negotiation as prometheus_client's own servers do it.
    assert b"Content-Type: application/openmetrics-text; version=1.0.0" in answers["openmetrics"]
    assert answers["openmetrics"].endswith(b"# EOF\n")


def test_an_address_in_use_is_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = msgspec.convert(
        {"state_dir": str(tmp_path / "state"), "metrics": {"listen": f"127.0.0.1:{port}"}},
        Config,
    )

    async def scenario() -> None:
        async with serve_metrics(Kernel(config)):
            raise AssertionError("bound a port in use")

    try:
        with pytest.raises(KernelError) as caught:
            run(scenario())
    finally:
        taken.close()
    assert str(caught.value) == (
        f"metrics.listen 127.0.0.1:{port}: cannot listen: Address already in use; "
        "choose another port"
    )


def test_no_listener_without_an_address(tmp_path):
    kernel = Kernel(Config(state_dir=str(tmp_path / "state")))

    async def scenario() -> list[tuple[str, int]]:
        async with serve_metrics(kernel) as bound:
            return bound

    assert run(scenario()) == []
