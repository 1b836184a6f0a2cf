"""Where a client talks to, for both clients: the control socket's path
(found as drivebayctl finds it, when first needed) or the HTTP API's URL."""

from __future__ import annotations

from typing import Protocol


class _Http(Protocol):
    @property
    def url(self) -> str: ...


class Endpoint:
    """``path``: the HTTP API's URL when the client speaks HTTP, else the
    control socket's path. pathlib is imported only when the path must be
    found (drivebayctl with ``-s`` never does)."""

    _path: str | None
    _http: _Http | None

    @property
    def path(self) -> str:
        if self._http is not None:
            return self._http.url
        if self._path is None:
            from drivebay.kernel.config_search import control_socket

            self._path = control_socket()
        return self._path
