from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon


@pytest.fixture(scope="session")
def envs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One environment store for every daemon of the session: built once."""
    return tmp_path_factory.mktemp("envs")


@pytest.fixture
def daemon_factory(tmp_path: Path, envs_dir: Path) -> Iterator[type]:
    made: list[Daemon] = []

    def make(name: str = "d", config: dict | None = None) -> Daemon:
        daemon = Daemon(tmp_path / name, envs_dir, config)
        made.append(daemon)
        return daemon

    yield make  # type: ignore[misc]
    for daemon in made:
        daemon.stop()


@pytest.fixture
def daemon(daemon_factory) -> Daemon:  # type: ignore[no-untyped-def]
    d = daemon_factory()
    d.start()
    return d
