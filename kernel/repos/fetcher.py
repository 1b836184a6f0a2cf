"""Fetching a repository's files for ``tuf.ngclient``, bounded in time.

``BoundedFetcher`` reads ``http://`` and ``https://`` URLs (urllib3, no proxy
settings from the environment: a daemon's downloads go where its config
says) and local files (a path or ``file://``: a mirror on a disk). Each
fetch ends by its ``Deadline``, or sooner once that is stopped (the daemon
is stopping): a server that trickles bytes cannot hold an install, nor a
shutdown, for longer. ngclient bounds the size (a target's length, a
metadata file's maximum) and checks the hashes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import urllib3
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from drivebay.kernel.repos.offers import Deadline

CHUNK = 256 * 1024
READ_GAP_S = 15.0  # the longest wait for the next bytes (and for a stop to be seen)


class BrokenTransfer(exceptions.DownloadError):
    """The server closed the connection before the whole body was sent."""


class BoundedFetcher(FetcherInterface):
    """Fetch by HTTP(S) or from local files, each fetch done by ``deadline``."""

    def __init__(self, deadline: Deadline, connect_s: float = 10.0) -> None:
        self.deadline = deadline
        self._pool = urllib3.PoolManager(retries=False)
        self._connect_s = connect_s

    def _left(self, url: str) -> float:
        left = self.deadline.left()
        if left <= 0:
            raise exceptions.SlowRetrievalError(f"{url}: time limit reached, or stopped")
        return left

    def _fetch(self, url: str) -> Iterator[bytes]:
        scheme = urlsplit(url).scheme
        if scheme in ("http", "https"):
            return self._http(url)
        if scheme in ("", "file"):
            return self._file(url)
        raise exceptions.DownloadError(f"{url}: only http, https and local paths are supported")

    def _http(self, url: str) -> Iterator[bytes]:
        left = self._left(url)
        timeout = urllib3.Timeout(connect=min(self._connect_s, left), read=min(READ_GAP_S, left))
        try:
            response = self._pool.request("GET", url, preload_content=False, timeout=timeout)
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"{url}: timed out") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        if response.status >= 400:
            response.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return self._chunks(url, response)

    def _chunks(self, url: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            for chunk in response.stream(CHUNK):
                self._left(url)
                yield chunk
        except urllib3.exceptions.ProtocolError as exc:  # IncompleteRead, reset
            raise BrokenTransfer(f"{url}: {exc.args[0] if exc.args else exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        finally:
            response.release_conn()

    def _file(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        path = Path(unquote(parts.path))
        try:
            handle = open(path, "rb")  # noqa: SIM115 -- closed by the generator
        except FileNotFoundError as exc:  # as a server's 404: no newer root, say
            raise exceptions.DownloadHTTPError(f"{path}: not found", 404) from exc
        except OSError as exc:
            raise exceptions.DownloadError(f"{path}: {exc.strerror}") from exc
        return self._read(url, handle)

    def _read(self, url: str, handle: object) -> Iterator[bytes]:
        from io import BufferedReader

        assert isinstance(handle, BufferedReader)
        with handle:
            while chunk := handle.read(CHUNK):
                self._left(url)
                yield chunk

    def close(self) -> None:
        self._pool.clear()
