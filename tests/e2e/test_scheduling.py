"""Against a real drivebayd: ``scheduling: batch`` makes the driver's process SCHED_BATCH."""

from __future__ import annotations

import os

from tests.e2e.test_resources import mis_daemon


def test_scheduling_batch_reaches_the_driver_process(daemon_factory, tmp_path):
    daemon = mis_daemon(daemon_factory, tmp_path, {"scheduling": "batch"})
    pid = daemon.status()["mis"]["pid"]
    assert os.sched_getscheduler(pid) == os.SCHED_BATCH
