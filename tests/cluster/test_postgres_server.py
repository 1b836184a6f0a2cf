"""The throw-away PostgreSQL server the cluster tests run against."""

from __future__ import annotations

import os
import stat

import psycopg

from tests.postgres import ThrowawayPostgres


def test_the_server_listens_on_its_own_unix_socket_only(postgres: ThrowawayPostgres) -> None:
    with psycopg.connect(postgres.conninfo()) as db:
        listen = db.execute("SHOW listen_addresses").fetchone()
        sockets = db.execute("SHOW unix_socket_directories").fetchone()
        user = db.execute("SELECT current_user").fetchone()
    assert listen == ("",)
    assert sockets == (postgres.socket_dir,)
    assert user == ("drivebay",)
    mode = os.stat(postgres.socket_dir).st_mode
    assert stat.S_IMODE(mode) == 0o700  # only its owner (and root) may connect


def test_each_test_has_a_database_of_its_own(database: str) -> None:
    with psycopg.connect(database) as db:
        tables = db.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)
