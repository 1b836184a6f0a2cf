"""Upgrades and property changes that no client of tcp-forward notices.

20 resources of tcp-forward (``listen_port: 0``) each carry one client
streaming through them to an echo server while 10 upgrades and 10 property
changes (the target moves between two echo servers) run back to back, then
one upgrade whose 5th takeover fails, so that every resource returns to the
version before it: the kernel moves resources concurrently, so at least 4 and
up to 19 had moved, and each of them must be handed back (the failing
version logs each takeover and hand-back). A probe connects all along. Every
stream must end with every byte back in order, no connection reset, every
probe answered (at least one inside each upgrade), and every resource on the
port it had at first.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import uvloop

from drivebay.client import AsyncClient
from tests.e2e.harness import Daemon, wait_for
from tests.e2e.streams import Probe, Stream, echo_servers, forward_bundle

RESOURCES = 20
UPGRADES = [f"1.0.{n}" for n in range(1, 11)]
FAILING = "1.0.11"
FAIL_AT = 5


def only_running(daemon: Daemon, version: str, failed: str | None = None) -> bool:
    result = daemon.ctl("status", "tcp-forward", "--json")
    assert result.returncode in (0, 3), result.stderr
    rows = sorted((row["version"], row["state"]) for row in json.loads(result.stdout))
    return rows == sorted([(version, "RUNNING"), *([(failed, "FAILED")] if failed else [])])


async def ports_of(admin: AsyncClient, resources: list[str]) -> dict[str, int]:
    stats = await asyncio.gather(*(admin.call(r, "stats") for r in resources))
    return {r: s["listen_port"] for r, s in zip(resources, stats, strict=True)}


def scene_resources() -> list[str]:
    return [f"fwd{n:02}" for n in range(RESOURCES)]


class Scene:
    """The daemon, its resources, the streams and the probe."""

    def __init__(self, daemon: Daemon, staging: Path, admin: AsyncClient) -> None:
        self.daemon, self.staging, self.admin = daemon, staging, admin
        self.resources = scene_resources()
        self.windows: list[tuple[str, float, float]] = []  # (version, dropped, alone)

    async def upgrade(self, version: str, fail_at: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        dropped = loop.time()
        self.daemon.drop(forward_bundle(self.staging, version, fail_at))

        def done() -> bool:
            if fail_at is None:
                return only_running(self.daemon, version)
            assert not only_running(self.daemon, version), f"{version}'s takeovers did not fail"
            return only_running(self.daemon, UPGRADES[-1], failed=version)

        await asyncio.to_thread(wait_for, done, 60, f"upgrade to {version}")
        self.windows.append((version, dropped, loop.time()))

    async def retarget(self, port: int) -> None:
        """A property change of every resource: new connections go to ``port``."""
        await asyncio.gather(
            *(
                self.admin.request(
                    "resource-set", {"id": r, "assignments": [f"target_port={port}"]}
                )
                for r in self.resources
            )
        )


async def scenario(daemon: Daemon, staging: Path) -> dict[str, Any]:
    async with echo_servers(2) as targets, await AsyncClient.connect(str(daemon.socket)) as admin:
        scene = Scene(daemon, staging, admin)
        for resource in scene.resources:
            assignments = ["listen_port=0", "target_host=127.0.0.1", f"target_port={targets[0]}"]
            await admin.request(
                "resource-add",
                {"id": resource, "driver": "tcp-forward", "assignments": assignments},
            )
        ports = await ports_of(admin, scene.resources)
        streams = [Stream(ports[r]) for r in scene.resources]
        probe = Probe(list(ports.values()))
        stop_streams, stop_probe = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as group:
            for stream in streams:
                group.create_task(stream.run(stop_streams))
            group.create_task(probe.run(stop_probe))
            seen = []
            for n, version in enumerate(UPGRADES):
                await scene.upgrade(version)
                await scene.retarget(targets[(n + 1) % 2])
                seen.append(await ports_of(admin, scene.resources))
            await scene.upgrade(FAILING, fail_at=FAIL_AT)
            seen.append(await ports_of(admin, scene.resources))
            stop_probe.set()
            stop_streams.set()
        return {
            "ports": ports,
            "seen": seen,
            "streams": streams,
            "probe": probe,
            "windows": scene.windows,
            "stats": await asyncio.gather(*(admin.call(r, "stats") for r in scene.resources)),
        }


def test_upgrades_and_property_changes_reach_no_client(daemon_factory, tmp_path):
    daemon = daemon_factory()
    staging = tmp_path / "staging"
    staging.mkdir()
    daemon.drop(forward_bundle(staging, "1.0.0"))
    daemon.start()
    daemon.wait_state("tcp-forward", "RUNNING")

    seen = uvloop.run(scenario(daemon, staging))

    streams: list[Stream] = seen["streams"]
    assert [error for s in streams for error in s.errors] == []
    assert all(s.sent > 0 and s.received == s.sent for s in streams), [
        (s.sent, s.received) for s in streams
    ]
    probe: Probe = seen["probe"]
    assert probe.errors == []
    for version, dropped, alone in seen["windows"]:
        assert probe.within(dropped, alone) >= 1, (
            f"no probe came back during the upgrade to {version}"
        )
    assert all(ports == seen["ports"] for ports in seen["seen"])
    # The streams' connections lived through it all: each resource accepted
    # its stream and the probes, and ended with none open.
    accepted = sum(stats["accepted"] for stats in seen["stats"])
    assert accepted == RESOURCES + len(probe.done)
    relayed = sum(s.sent for s in streams) + len(b"probe") * len(probe.done)
    assert sum(stats["bytes_in"] for stats in seen["stats"]) == relayed
    assert only_running(daemon, UPGRADES[-1], failed=FAILING)
    failed = daemon.ctl("status", f"tcp-forward@{FAILING}", "--json").stdout
    assert f"takeover {FAIL_AT} fails" in failed and "rolled back" in failed, failed
    log = daemon.log()
    took = {r for r in scene_resources() if f"test switch: took over {r}\n" in log}
    handed_back = {r for r in scene_resources() if f"test switch: handing back {r}\n" in log}
    assert len(took) >= FAIL_AT - 1 and handed_back == took, (took, handed_back)
    # The daemon names them too, in one line of the rollback.
    named = re.findall(r"handed \d+ resources back to tcp-forward@\S+: (.*)", log)
    assert [set(line.split(", ")) for line in named] == [took], named
    print(
        f"{sum(s.sent for s in streams) / 1e6:.1f} MB streamed, {len(probe.done)} probes, "
        f"upgrades {[round(end - start, 2) for _, start, end in seen['windows']]} s"
    )
