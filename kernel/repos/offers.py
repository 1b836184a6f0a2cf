"""What the daemon knows of a repository and what it offers (no TUF import:
the daemon starts without loading the client until a repository is read)."""

from __future__ import annotations

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
