"""A throw-away PostgreSQL server for the session (tests/postgres.py) and a
fresh database in it for each test that asks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest

from tests.postgres import PostgresUnavailable, ThrowawayPostgres

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    try:
        server = ThrowawayPostgres()
        server.start()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database(postgres: ThrowawayPostgres) -> str:
    """The ``postgresql://`` URL of a new, empty database of its own."""
    name = f"test_{next(_numbers)}"
    with psycopg.connect(postgres.conninfo(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return postgres.url(name)
