"""Default locations, importable without msgspec (drivebayctl starts fast)."""

from __future__ import annotations

DEFAULT_STATE_DIR = "~/.local/state/drivebay"
SOCKET_NAME = "drivebayd.sock"
HTTP_SOCKET_NAME = "http.sock"
DRIVERS_NAME = "drivers"
