"""The keeper and the init of a driver's PID namespace never die silently:
a failure there is one escaped line on stderr and exit status 5."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_failure_in_the_init_is_one_line_on_stderr():
    program = (
        "from drivebay.protocol.init_shim import _fail\n"
        "_fail('init', BlockingIOError(11, 'Resource temporarily unavailable\\x1b[2J'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 5
    assert done.stderr == (
        b"drivebay init: BlockingIOError: [Errno 11] Resource temporarily unavailable\\x1b[2J\n"
    )
