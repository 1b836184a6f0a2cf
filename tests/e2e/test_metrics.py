"""Metrics end to end: a real daemon scraped over its own metrics listener."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import wait_for
from tests.sandbox.bundles import make_bundle

pytestmark = pytest.mark.slow


def scrape(url: str) -> list[Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list[Any], name: str, **labels: str) -> float:
    matches = [s.value for s in found if s.name == name and labels.items() <= s.labels.items()]
    assert len(matches) == 1, (name, labels, matches)
    return float(matches[0])


def test_a_scrape_shows_states_calls_and_the_driver_process(daemon_factory, tmp_path):
    daemon = daemon_factory(config={"metrics": {"listen": "127.0.0.1:0"}})
    daemon.start()
    port = wait_for(
        lambda: re.search(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", daemon.log()),
        what="the metrics listener's address in the log",
    )[1]
    url = f"http://127.0.0.1:{port}/metrics"
    daemon.drop(make_bundle(tmp_path / "staging", name="alpha"))
    row = daemon.wait_state("alpha", "RUNNING")
    assert daemon.ctl("resource", "add", "r1", "--driver", "alpha").returncode == 0
    assert daemon.ctl("call", "r1", "echo", "text=hi").returncode == 0
    assert daemon.ctl("call", "r1", "not_an_operation").returncode == 1

    found = scrape(url)
    alpha = {"driver": "alpha", "version": "1.0.0"}
    states = {
        s.labels["state"]: s.value
        for s in found
        if s.name == "drivebay_driver_state" and alpha.items() <= s.labels.items()
    }
    assert states["RUNNING"] == 1 and sum(states.values()) == 1
    assert value(found, "drivebay_calls_total", operation="echo", outcome="ok", **alpha) == 1
    # A name the class lacks is no label of its own.
    assert value(found, "drivebay_calls_total", operation="other", outcome="error", **alpha) == 1
    assert not [s for s in found if s.labels.get("operation") == "not_an_operation"]
    assert value(found, "drivebay_call_duration_seconds_count", **alpha) == 2
    assert value(found, "drivebay_driver_resident_memory_bytes", **alpha) > 0
    assert value(found, "drivebay_driver_open_fds", **alpha) > 0
    assert value(found, "drivebay_driver_cpu_seconds_total", **alpha) >= 0
    assert value(found, "drivebay_driver_restarts_total", **alpha) == row["restarts"] == 0
    assert value(found, "drivebay_resources", **alpha) == 1
    assert value(found, "drivebay_mailbox_depth", **alpha) == 0
    assert value(found, "drivebay_bundles", verdict="valid") == 1
    assert value(found, "process_resident_memory_bytes") > 0  # the daemon itself

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert missing.value.code == 404
    missing.value.close()
