"""What the daemon knows of a repository and what it offers (no TUF import:
the daemon starts without loading the client until a repository is read)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from drivebay.protocol.errors import RequestError


@dataclass(frozen=True)
class Source:
    """A repository: its name, URL (or directory) and trusted root's bytes."""

    name: str
    url: str
    root: bytes
    kept: bool = False  # added with drivebayctl repo add (not from the config)


@dataclass(frozen=True)
class Offer:
    """One bundle a repository offers, from its verified targets metadata."""

    repo: str
    name: str
    version: str
    category: str | None
    python: str | None
    path: str  # the TUF target path, NAME/NAME-VERSION.zip
    length: int


class RepositoryFailure(RequestError):
    """A repository could not be read or a download was refused; nothing was placed."""


class Deadline:
    """When a repository's work must end: ``seconds`` from now, or at once
    after ``stopped`` is set (from another thread)."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.stopped = threading.Event()

    def left(self) -> float:
        return 0.0 if self.stopped.is_set() else max(0.0, self.at - time.monotonic())
