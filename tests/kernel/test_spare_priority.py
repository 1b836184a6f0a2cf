"""A spare imports at low priority and is put back once it has said Hello,
only where the daemon can put it back: the decision as a table, and a real
child whose interpreter is a script that waits until it has been reniced and
writes down the nice value it then has (its imports' priority)."""

from __future__ import annotations

import os
import sys

import pytest

from drivebay.kernel.drivers.process import DriverProcess
from drivebay.kernel.drivers.spare_priority import (
    CAP_SYS_NICE,
    ImportNice,
    for_this_daemon,
    import_nice,
)
from tests.helpers import FAST, fixture_spec, run

CAP = 1 << CAP_SYS_NICE


@pytest.mark.parametrize(
    ("cap_eff", "rlimit_nice", "base", "expected"),
    [
        (CAP, 0, 0, ImportNice(10, 0)),  # root: put back whatever RLIMIT_NICE says
        (0, 0, 0, None),  # an ordinary user: could not go back to 0
        (0, 20, 0, ImportNice(10, 0)),  # ... unless RLIMIT_NICE reaches down to it
        (0, 10, 5, None),  # 20 - 10 = 10 > 5
        (CAP, 0, 15, ImportNice(19, 15)),  # at most 19
        (CAP, 0, 19, None),  # nothing lower to go to
        (CAP - 1, 0, 0, None),  # other capabilities do not help
    ],
)
def test_import_nice(cap_eff, rlimit_nice, base, expected):
    assert import_nice(cap_eff, rlimit_nice, base) == expected


def test_a_spare_imports_at_low_priority_and_runs_at_the_base_one(tmp_path):
    """As an ordinary user (nothing to put back) the raise alone is seen."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    nice = for_this_daemon() or ImportNice(min(19, base + 10), min(19, base + 10))
    record = tmp_path / "nice-at-import"
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'while [ "$(nice)" = "{base}" ]; do sleep 0.01; done\n'  # until reniced
        f'nice > "{record}"\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)

    async def main() -> None:
        process = DriverProcess(fixture_spec(tmp_path, python=python), FAST)
        process.import_nice = nice
        await process.launch()
        try:
            assert record.read_text().strip() == str(nice.low)
            assert process.group is not None
            assert os.getpriority(os.PRIO_PGRP, process.group) == nice.base
            await process.finish_start()
            assert (await process.health())["ok"] is True
        finally:
            await process.stop()

    if nice.low == base:
        pytest.fail("the test's own nice is 19: run it at a lower nice value")
    run(main())
