"""Where the config file is, for drivebayd and drivebayctl alike (stdlib only)."""

from __future__ import annotations

import os
from pathlib import Path

SEARCH_PATHS = (Path("drivebay.yaml"), Path("/etc/drivebay/drivebay.yaml"))


def find_config(explicit: str | None) -> Path | None:
    """The config file to read: explicit, $DRIVEBAY_CONFIG, then the search path."""
    if explicit:
        return Path(explicit)
    if os.environ.get("DRIVEBAY_CONFIG"):
        return Path(os.environ["DRIVEBAY_CONFIG"])
    for candidate in SEARCH_PATHS:
        if candidate.is_file():
            return candidate
    return None
