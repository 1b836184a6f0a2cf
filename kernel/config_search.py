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


def control_socket(config: str | None = None) -> str:
    """The control socket's path, as drivebayctl finds it: the socket of the
    config file ``find_config`` picks (the same file the daemon reads), else
    the default state dir's. ``ConfigError`` if that file is invalid."""
    path = find_config(config)
    if path is None:
        from drivebay.kernel.paths import DEFAULT_STATE_DIR, SOCKET_NAME

        return os.path.join(os.path.expanduser(DEFAULT_STATE_DIR), SOCKET_NAME)
    from drivebay.kernel.config import load_config

    return str(load_config(path).socket_path)
