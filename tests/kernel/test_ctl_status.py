"""How drivebayctl shows a status row (pure rendering, no daemon)."""

from __future__ import annotations

import time

from drivebay.kernel.drivebayctl import print_status


def row(state: str, **extra: object) -> dict[str, object]:
    base = {
        "name": "crashy",
        "version": "1.0.0",
        "state": state,
        "pid": None,
        "uptime_s": None,
        "restarts": 3,
        "resources": 0,
        "message": "exited (exit code 1); gave up after 3 restarts within 60s",
    }
    return {**base, **extra}


def test_a_fatal_driver_that_is_retried_says_when_in_local_time(capsys):
    at = time.time() + 125
    print_status([row("FATAL", next_retry_at=at), row("FATAL", next_retry_at=None)])
    retried, stays = capsys.readouterr().out.splitlines()
    clock = time.strftime("%H:%M:%S", time.localtime(at))
    assert retried == (
        "crashy@1.0.0".ljust(33) + f"FATAL, retry at {clock} exited (exit code 1); gave up "
        "after 3 restarts within 60s"
    )
    assert stays.startswith("crashy@1.0.0".ljust(33) + "FATAL      exited (exit code 1)")
